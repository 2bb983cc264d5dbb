"""The use cases both HTTP dialects call: typed inputs in, typed results out; no HTTP here."""
