"""What the app needs beyond the engine: the workspace (which folders a session may read and write), sessions, quotas."""
