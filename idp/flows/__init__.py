"""User journeys as server-side state machines (DESIGN §2): one module per flow, the record in ``base``."""
import importlib

# Each module named here defines ``bp``, its blueprint. A module that does not exist yet is skipped, so flows can
# land one at a time.
FLOW_MODULES = ("login", "registration_referent", "registration_employee", "sim_association", "recovery",
                "account")


def FLOW_BLUEPRINTS():
    blueprints = []
    for name in FLOW_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        blueprints.append(module.bp)
    return blueprints
