"""Agent presets shipped with rlattr (one YAML file per task); installed as ``rlattr.agents``."""
