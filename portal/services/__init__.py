"""Business operations. Each takes plain data, an audit ``Context`` and a SQLAlchemy session,
adds its audit event to that session and never commits: the caller's transaction decides."""
