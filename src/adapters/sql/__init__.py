"""What the SQL adapters share: the errors (`errors`), the codec (`codec`), the
tables (`tables`), the session and unit of work (`session`, `unit_of_work`), the
repositories (`accounts`, `events`, `entities`), the instance registry
(`instances`) and the schema steps (`schema`)."""
