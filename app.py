"""MergeDesk web app: builds the page from ui/ and launches it.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)
"""
from ui.layout import build_app

if __name__ == "__main__":
    build_app().launch()
