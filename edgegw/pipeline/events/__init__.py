"""Business events: declared triggers, fields captured at the trigger, contracts, keys."""
