"""User journeys as server-side state machines (DESIGN §2): one module per flow, the record in ``base``."""
