"""Offline generator of ALFWorld problems for the real ALFWorld engine (docs/design.md §5).

The official ALFWorld games need a download. This module writes new ones in the same format: a
JSON game file with the ALFRED PDDL domain and grammar shipped in the ``alfworld`` wheel and a
PDDL problem built from a drawn scene. A problem is one of the six ALFWorld task types in a small scene drawn
from the wheel's THOR FloorPlan data:

* receptacles are real instances of the FloorPlan (``FloorPlanN-openable.json``: ALFRED object
  ids with their interaction points), plus one instance of each receptacle class the FloorPlan's
  object list names but that file lacks (garbage can, coffee machine, toilet, ...);
* objects are classes from the FloorPlan's object list (``FloorPlanN-objects.json``), each put in a
  receptacle whose class may hold it (``alfworld.gen.constants.VAL_RECEPTACLE_OBJECTS``, also
  written into the problem as ``canContain`` facts the engine checks);
* the goal and the task sentence come from ALFRED's goal library (``alfworld.gen.goal_library``),
  and the scene type must be one ALFRED allows for the task (``constants.GOALS_VALID``).

Everything is drawn from ``random.Random`` seeded by (task type, seed, attempt), so a seed always
gives the same problem. :mod:`priorcache.envs.alfworld_pddl` writes a drawn scene as the PDDL
problem and game file. This module is pure: it never runs the engine. Whether a problem is
solvable is decided by the planner expert in :mod:`priorcache.envs.alfworld_games`, which asks for
the next attempt when one fails.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: Our task-type names (the ``task_type`` variants) -> ALFRED's goal names.
TASK_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "pick_and_place": "pick_and_place_simple",
        "pick_clean_then_place": "pick_clean_then_place_in_recep",
        "pick_heat_then_place": "pick_heat_then_place_in_recep",
        "pick_cool_then_place": "pick_cool_then_place_in_recep",
        "look_at_obj_in_light": "look_at_obj_in_light",
        "pick_two_obj_and_place": "pick_two_obj_and_place",
    }
)

#: ALFWorld's data splits. Generated problems follow ALFRED's split of FloorPlans: ``train`` and
#: ``valid_seen`` use the training FloorPlans (with different problems), ``valid_unseen`` the
#: FloorPlans held out for testing.
SPLITS = ("train", "valid_seen", "valid_unseen")

#: Bumped whenever a change here changes what a (task type, seed) generates.
GENERATOR_VERSION = 1

# Scene size: small on purpose, the engine's step time grows quickly with scene size.
MIN_RECEPTACLES, MAX_RECEPTACLES = 6, 9
MIN_OBJECTS, MAX_OBJECTS = 8, 13
_MAX_PER_RECEPTACLE = 4

# The appliance each state-change task needs (the domain's Clean/Heat/CoolObject name these
# receptacle types), and the object property it needs.
_APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
_PROPERTY = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}
# Toggleable light for look_at_obj_in_light, and the furniture a desk lamp stands on.
_LAMP = "DeskLamp"
_LAMP_SURFACES = ("Desk", "SideTable", "Dresser", "DiningTable", "CoffeeTable", "Shelf", "TVStand")
_MANGLE = (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_"))


def mangle(name: str) -> str:
    """ALFRED's PDDL spelling of a THOR id ("Apple|+01.00|..." -> "Apple_bar__plus_01_dot_00...").

    ALFWorld's demangler reverses it and numbers instances ("apple 1"), so ids must use it.
    """
    for char, word in _MANGLE:
        name = name.replace(char, word)
    return name


@dataclass(frozen=True)
class Scene:
    """One generated problem, before it is written as PDDL."""

    task_type: str  # one of TASK_TYPES (our names)
    split: str
    seed: int
    attempt: int
    floorplan: str
    object_target: str  # class, e.g. "Apple"
    parent_target: str | None  # receptacle class, None for look_at_obj_in_light
    toggle_target: str | None  # "DeskLamp" for look_at_obj_in_light
    task_sentence: str  # "put a clean apple in fridge"
    agent_location: str  # "loc|x|z|rot|horizon"
    #: receptacle id -> location; ids are ALFRED ids ("Fridge|-02.10|+00.00|+01.09")
    receptacles: Mapping[str, str] = field(default_factory=dict)
    #: object id -> receptacle id it starts in
    objects: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "split": self.split,
            "seed": self.seed,
            "attempt": self.attempt,
            "floorplan": self.floorplan,
            "object_target": self.object_target,
            "parent_target": self.parent_target,
            "toggle_target": self.toggle_target,
            "task_sentence": self.task_sentence,
            "agent_location": self.agent_location,
            "receptacles": dict(self.receptacles),
            "objects": dict(self.objects),
        }


def class_of(thor_id: str) -> str:
    """Object class of an ALFRED id; sink and bathtub basins carry theirs as the last part."""
    parts = thor_id.split("|")
    return parts[-1] if parts[-1].endswith("Basin") else parts[0]


@functools.lru_cache(maxsize=1)
def _alfworld_data() -> tuple[Path, Any, Any]:
    import alfworld.gen.constants as constants
    import alfworld.gen.goal_library as goal_library

    return Path(constants.__file__).parent / "layouts", constants, goal_library


@functools.cache
def _floorplan(
    name: str,
) -> tuple[tuple[str, ...], Mapping[str, tuple[float, ...]], tuple[tuple[float, float], ...]]:
    """(object classes, receptacle id -> interaction point, floor points) of a FloorPlan."""
    import numpy as np

    layouts, _, _ = _alfworld_data()
    classes = tuple(json.loads((layouts / f"{name}-objects.json").read_text(encoding="utf-8")))
    points = json.loads((layouts / f"{name}-openable.json").read_text(encoding="utf-8"))
    floor = np.load(layouts / f"{name}-layout.npy")
    return (
        classes,
        MappingProxyType({k: tuple(float(x) for x in v) for k, v in sorted(points.items())}),
        tuple((float(x), float(z)) for x, z in floor.tolist()),
    )


@functools.lru_cache(maxsize=1)
def floorplans() -> tuple[str, ...]:
    """Names of the FloorPlans the wheel ships object lists for, in numeric order."""
    layouts, _, _ = _alfworld_data()
    names = [p.name[: -len("-objects.json")] for p in layouts.glob("FloorPlan*-objects.json")]
    return tuple(sorted(names, key=lambda n: int(n[len("FloorPlan") :])))


def _scene_type(floorplan: str) -> str:
    _, constants, _ = _alfworld_data()
    number = int(floorplan[len("FloorPlan") :])
    for kind, numbers in constants.SCENE_TYPE.items():
        if number in numbers:
            return kind
    raise ValueError(f"{floorplan} is of no known scene type")  # pragma: no cover


@functools.lru_cache(maxsize=1)
def _can_contain() -> Mapping[str, frozenset[str]]:
    _, constants, _ = _alfworld_data()
    return MappingProxyType({k: frozenset(v) for k, v in constants.VAL_RECEPTACLE_OBJECTS.items()})


@functools.lru_cache(maxsize=1)
def _pickupable_classes() -> frozenset[str]:
    """Whole (unsliced) object classes some receptacle may hold: the ones that can be carried."""
    _, constants, _ = _alfworld_data()
    held = set().union(*constants.VAL_RECEPTACLE_OBJECTS.values())
    return frozenset(c for c in held if not c.endswith("Sliced") and c in constants.OBJECTS_SET)


def _location(x: float, z: float, rotation: float, horizon: float) -> str:
    # ALFRED's discrete pose: grid units of 0.25 m, rotation in quarter turns, camera horizon.
    return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{round(rotation / 90) % 4}|{round(horizon)}"


def _receptacle_pool(floorplan: str, rng: random.Random) -> dict[str, str]:
    """All receptacles of a FloorPlan (id -> location), one location each.

    Receptacle classes the object list names but the interaction-point file lacks get one
    instance at a free floor point; receptacles sharing an interaction point with an earlier one
    are dropped, so that every "go to" names exactly one receptacle.
    """
    classes, points, floor = _floorplan(floorplan)
    can_contain = _can_contain()
    _, constants, _ = _alfworld_data()
    pool: dict[str, str] = {}
    used: set[str] = set()
    for rid, (x, z, rot, hor) in points.items():
        if class_of(rid) not in can_contain:
            continue
        loc = _location(x, z, rot, hor)
        if loc not in used:
            pool[rid] = loc
            used.add(loc)
    present = {class_of(r) for r in pool}
    extra = sorted(
        c for c in set(classes) if c in can_contain and c not in constants.MOVABLE_RECEPTACLES_SET and c not in present
    )
    for cls in extra:
        for _ in range(20):
            x, z = rng.choice(floor)
            loc = _location(x, z, rng.choice((0, 90, 180, 270)), 30)
            if loc not in used:
                break
        else:  # pragma: no cover - FloorPlans have ~100 floor points
            continue
        y = rng.uniform(0.0, 1.0)
        rid = f"{cls}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}"
        if cls == "SinkBasin":
            rid = f"Sink|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}|SinkBasin"
        pool[rid] = loc
        used.add(loc)
    return pool


class GenerationError(RuntimeError):
    """No problem of the requested kind fits the drawn FloorPlan; the caller draws again."""


def _candidate_floorplans(goal: str, split: str) -> list[str]:
    _, constants, _ = _alfworld_data()
    numbers = set(constants.TEST_SCENE_NUMBERS if split == "valid_unseen" else constants.TRAIN_SCENE_NUMBERS)
    out = []
    for fp in floorplans():
        if int(fp[len("FloorPlan") :]) not in numbers:
            continue
        if _scene_type(fp) not in constants.GOALS_VALID[goal]:
            continue
        classes, _, _ = _floorplan(fp)
        if goal == "look_at_obj_in_light" and _LAMP not in classes:
            continue
        out.append(fp)
    return out


def sample_scene(task_type: str, seed: int, attempt: int = 0, split: str = "train") -> Scene:
    """Draw the problem (task_type, seed, attempt, split); raises GenerationError if the draw fails.

    ``attempt`` selects another draw for the same (task_type, seed): the caller increments it
    until a problem is generated and certified solvable.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; choose one of {sorted(TASK_TYPES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    goal = TASK_TYPES[task_type]
    _, constants, goal_library = _alfworld_data()
    rng = random.Random(f"priorcache-alfworld-v{GENERATOR_VERSION}:{split}:{task_type}:{seed}:{attempt}")
    floorplan = rng.choice(_candidate_floorplans(goal, split))
    classes, _, floor = _floorplan(floorplan)
    pool = _receptacle_pool(floorplan, rng)
    can_contain = _can_contain()
    pickupable = sorted(_pickupable_classes() & set(classes))
    pool_classes = sorted({class_of(r) for r in pool})

    def holders(obj_cls: str, exclude: Sequence[str] = ()) -> list[str]:
        return [c for c in pool_classes if obj_cls in can_contain[c] and c not in exclude]

    appliance = _APPLIANCE.get(goal)
    if appliance is not None and appliance not in pool_classes:
        raise GenerationError(f"{floorplan} has no {appliance}")
    toggle = _LAMP if goal == "look_at_obj_in_light" else None
    lamp_surfaces = [c for c in pool_classes if c in _LAMP_SURFACES]
    if toggle and not lamp_surfaces:
        raise GenerationError(f"{floorplan} has nothing to stand a desk lamp on")

    # -- the target object class and receptacle class
    if goal == "look_at_obj_in_light":
        choices = [(o, None) for o in pickupable if holders(o)]
    else:
        prop = _PROPERTY.get(goal)
        choices = []
        for obj_cls in pickupable:
            if prop and obj_cls not in constants.VAL_ACTION_OBJECTS[prop]:
                continue
            for recep_cls in holders(obj_cls, exclude=[appliance] if appliance else []):
                # The object must be able to start somewhere that is not a goal receptacle.
                if holders(obj_cls, exclude=[recep_cls]):
                    choices.append((obj_cls, recep_cls))
    if not choices:
        raise GenerationError(f"no {task_type} task fits {floorplan}")
    object_target, parent_target = rng.choice(choices)

    # -- receptacles: the ones the task needs first, then random others
    ids_by_class: dict[str, list[str]] = {}
    for rid in pool:
        ids_by_class.setdefault(class_of(rid), []).append(rid)
    chosen: list[str] = []

    def take_one(cls: str) -> str:
        free = [r for r in ids_by_class[cls] if r not in chosen]
        rid = rng.choice(free) if free else rng.choice([r for r in chosen if class_of(r) == cls])
        if rid not in chosen:
            chosen.append(rid)
        return rid

    if parent_target:
        take_one(parent_target)
    if appliance:
        take_one(appliance)
    lamp_recep = take_one(rng.choice(lamp_surfaces)) if toggle else None
    n_receptacles = rng.randint(MIN_RECEPTACLES, MAX_RECEPTACLES)
    others = [r for r in pool if r not in chosen]
    rng.shuffle(others)
    for rid in others:
        if len(chosen) >= n_receptacles:
            break
        chosen.append(rid)
    start_holders = [r for r in chosen if object_target in can_contain[class_of(r)] and class_of(r) != parent_target]
    if not start_holders:
        # Make room for a receptacle the target can start in.
        allowed = holders(object_target, [parent_target or ""])
        extra = [r for r in pool if r not in chosen and class_of(r) in allowed]
        if not extra:
            raise GenerationError(f"nowhere for the {object_target} to start in {floorplan}")
        chosen.append(rng.choice(extra))
        start_holders = [chosen[-1]]

    # -- objects: the targets first, then distractors
    contents: dict[str, list[str]] = {r: [] for r in chosen}
    objects: dict[str, str] = {}
    used_names: set[str] = set()

    def place(obj_cls: str, receptacles: Sequence[str]) -> bool:
        room = [r for r in receptacles if len(contents[r]) < _MAX_PER_RECEPTACLE]
        if not room:
            return False
        rid = rng.choice(room)
        rx, ry, rz = (float(v) for v in rid.split("|")[1:4])
        for _ in range(50):
            oid = (
                f"{obj_cls}|{rx + rng.uniform(-0.6, 0.6):+06.2f}|"
                f"{ry + rng.uniform(0.0, 0.5):+06.2f}|{rz + rng.uniform(-0.6, 0.6):+06.2f}"
            )
            if mangle(oid).lower() not in used_names:
                break
        else:  # pragma: no cover
            return False
        used_names.add(mangle(oid).lower())
        objects[oid] = rid
        contents[rid].append(oid)
        return True

    if toggle:
        place(toggle, [lamp_recep])
    n_targets = 2 if goal == "pick_two_obj_and_place" else rng.choice((1, 1, 2))
    for _ in range(n_targets):
        if not place(object_target, start_holders):
            raise GenerationError("no room for the target objects")
    n_objects = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    distractors = [c for c in pickupable if c != object_target]
    tries = 0
    while len(objects) < n_objects and distractors and tries < 200:
        tries += 1
        obj_cls = rng.choice(distractors)
        place(obj_cls, [r for r in chosen if obj_cls in can_contain[class_of(r)]])

    # -- the agent starts on a floor point that is no receptacle's
    taken = {pool[r] for r in chosen}
    for _ in range(50):
        x, z = rng.choice(floor)
        agent_location = _location(x, z, rng.choice((0, 90, 180, 270)), 30)
        if agent_location not in taken:
            break
    else:  # pragma: no cover
        raise GenerationError("no free floor point for the agent")

    template = rng.choice(goal_library.gdict[goal]["templates"])
    sentence = template.format(
        obj=object_target.lower(),
        recep=(parent_target or "").lower(),
        toggle=(toggle or "").lower(),
        mrecep="",
    )
    return Scene(
        task_type=task_type,
        split=split,
        seed=seed,
        attempt=attempt,
        floorplan=floorplan,
        object_target=object_target,
        parent_target=parent_target,
        toggle_target=toggle,
        task_sentence=sentence,
        agent_location=agent_location,
        receptacles={r: pool[r] for r in sorted(chosen)},
        objects=dict(sorted(objects.items())),
    )
