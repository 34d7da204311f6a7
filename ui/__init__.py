"""ui: the Gradio pages (the only package that imports gradio): chat, documents, feedback, adapters, lab."""
