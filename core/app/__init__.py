"""What the app needs beyond the engine: its folders and hosted bounds (workspace), what a model
reference may resolve to (paths), the pickers' models (models), per-visitor folders (sessions), the
hosted quota (quota), zip and Hub push (export). No gradio here: ui/ calls these."""
