"""MergeDesk's Gradio panels. Each module builds its components and wires them to core/;
no tensor math lives here."""
