"""What the SQL adapters share: the mapping, the schema steps and the errors."""
