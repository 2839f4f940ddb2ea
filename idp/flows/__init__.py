"""User journeys as server-side state machines (DESIGN §2): one module per flow, the record in ``base``."""


def blueprints():
    from . import (account, login, recovery, registration_employee, registration_referent,  # noqa: F401
                   sim_association)
    return [login.bp, registration_referent.bp, registration_employee.bp, sim_association.bp, recovery.bp,
            account.bp]
