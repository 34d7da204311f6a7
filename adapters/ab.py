"""A/B serving: a share of new conversations goes to a candidate version, the rest to what the registry serves.

    adapters/AB   {"version": "v0003-sft", "share": 0.2, "started": "..."}   (absent = no experiment)

The arm of a conversation is a pure function of its id and the share, so every turn (and every retry) of a
conversation stays on one arm, and a restart changes nothing. Each stored answer records the adapter that produced
it, so the Feedback tab's thumbs-up ratio by adapter is the experiment's read-out. Only requests that ask for the
default ("active") adapter take part; an explicit pick in the Adapter selector is always honoured.
"""
from __future__ import annotations

import hashlib
import json
import time

from adapters.registry import Registry, RegistryError, atomic_write, attach

FILE = "AB"


# ---------------------------------------------------------------------------------------------- pure
def in_candidate_arm(conversation_id: int | str, share: float, version: str = "") -> bool:
    """Deterministic: the same conversation and experiment always land in the same arm; about `share` of all
    conversations land in the candidate's."""
    digest = hashlib.sha256(f"{version}:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def route(experiment: dict | None, conversation_id: int | str | None, requested):
    """The adapter argument for a request: the experiment's version for conversations in its arm when the request
    asked for the default adapter; `requested` unchanged otherwise."""
    if experiment is None or conversation_id is None or requested != "default":
        return requested
    if in_candidate_arm(conversation_id, experiment["share"], experiment["version"]):
        return experiment["version"]
    return requested


def check_share(share) -> float:
    try:
        share = float(share)
    except (TypeError, ValueError):
        raise RegistryError(f"the A/B share must be a number between 0 and 1, got {share!r}") from None
    if not 0.0 < share < 1.0:
        raise RegistryError(f"the A/B share must be between 0 and 1 (exclusive), got {share}")
    return share


# ---------------------------------------------------------------------------------------------- registry file
def read(registry: Registry) -> dict | None:
    """The running experiment, or None. A damaged file reads as no experiment."""
    try:
        data = json.loads((registry.root / FILE).read_text(encoding="utf-8"))
        return {"version": str(data["version"]), "share": check_share(data["share"]),
                "started": data.get("started", "")}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def start(registry: Registry, version: str, share: float) -> dict:
    """Send `share` of new conversations to `version` (a valid LoRA version that is not the one served)."""
    share = check_share(share)
    with registry._locked():
        meta = registry.get(version)
        if meta.get("kind") == "full":
            raise RegistryError(f"{version} is a full model: it cannot be served beside the active version")
        if version == registry.serving():
            raise RegistryError(f"{version} is already served to everyone")
        registry.validate(meta["folder"])
        experiment = {"version": version, "share": share, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write(registry.root / FILE, json.dumps(experiment) + "\n")
    return experiment


def stop(registry: Registry) -> dict | None:
    """End the experiment; returns the one that ran (None when none did)."""
    with registry._locked():
        was = read(registry)
        (registry.root / FILE).unlink(missing_ok=True)
    return was


def sync(registry: Registry, model) -> dict | None:
    """Attach the experiment's version to a `ChatModel` (once). Returns the experiment when it can be served,
    None otherwise (no experiment, or its version no longer validates: logged by the caller)."""
    experiment = read(registry)
    if experiment is not None:
        attach(registry, model, experiment["version"])
    return experiment


def summary(experiment: dict | None) -> str:
    if experiment is None:
        return "no A/B test"
    return f"A/B: {experiment['version']} gets {experiment['share']:.0%} of new conversations " \
           f"(since {experiment['started']})"
