"""One validated config: typed schemas for every group (schema.py), CLI override checks
(overrides.py), and the one validation pass before anything is built (validate.py)."""
from bench.config import schema  # noqa: F401  (registers the schemas in Hydra's ConfigStore)
from bench.config.overrides import check as check_overrides
from bench.config.overrides import load_choice
from bench.config.validate import Checked, pick_device, validate

__all__ = ["Checked", "check_overrides", "load_choice", "pick_device", "validate"]
