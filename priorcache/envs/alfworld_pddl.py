"""ALFRED PDDL problems and ALFWorld game files for the scenes drawn by :mod:`priorcache.envs.alfworld_gen`.

:func:`pddl_problem` writes a :class:`~priorcache.envs.alfworld_gen.Scene` as an ALFRED PDDL problem
for the domain shipped in the ``alfworld`` wheel (``alfworld/data/alfred.pddl``): objects, receptacles
and locations under ALFRED's mangled ids, their types and properties, ``canContain`` facts and the
goal from ALFRED's goal library. :func:`game_data` wraps it with the wheel's domain and grammar (the
task sentence filled in) into the content of a ``game.tw-pddl`` file, and :func:`traj_data` gives the
``traj_data.json`` ALFWorld keeps beside each game. Like the generator, this module never runs the
engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from priorcache.envs.alfworld_gen import TASK_TYPES, Scene, _alfworld_data, _can_contain, class_of, mangle

# Object-type and receptacle-type constants the domain's actions mention; the problem declares them.
_DOMAIN_OTYPES = ("KnifeType", "ButterKnifeType")
_DOMAIN_RTYPES = ("SinkBasinType", "MicrowaveType", "FridgeType")
_AGENT = "agent1"


def pddl_problem(scene: Scene) -> str:
    """The scene as an ALFRED PDDL problem for ``alfworld/data/alfred.pddl``."""
    _, constants, goal_library = _alfworld_data()
    can_contain = _can_contain()
    goal_name = TASK_TYPES[scene.task_type]

    obj_classes = sorted({class_of(o) for o in scene.objects})
    rec_classes = sorted({class_of(r) for r in scene.receptacles})
    otypes = sorted({f"{c}Type" for c in obj_classes} | set(_DOMAIN_OTYPES) | {f"{scene.object_target}Type"})
    rtypes = sorted({f"{c}Type" for c in rec_classes} | set(_DOMAIN_RTYPES))
    if scene.parent_target:
        rtypes = sorted(set(rtypes) | {f"{scene.parent_target}Type"})
    if scene.toggle_target:
        otypes = sorted(set(otypes) | {f"{scene.toggle_target}Type"})
    locations = sorted(set(scene.receptacles.values()) | {scene.agent_location})

    declare = [f"{_AGENT} - agent"]
    declare += [f"{mangle(r)} - receptacle" for r in scene.receptacles]
    declare += [f"{mangle(o)} - object" for o in scene.objects]
    declare += [f"{mangle(loc)} - location" for loc in locations]
    declare += [f"{t} - otype" for t in otypes]
    declare += [f"{t} - rtype" for t in rtypes]

    init = ["(= (total-cost) 0)", f"(atLocation {_AGENT} {mangle(scene.agent_location)})"]
    for rid, loc in scene.receptacles.items():
        cls = class_of(rid)
        init.append(f"(receptacleType {mangle(rid)} {cls}Type)")
        init.append(f"(receptacleAtLocation {mangle(rid)} {mangle(loc)})")
        if cls in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {mangle(rid)})")
    actions = constants.VAL_ACTION_OBJECTS
    for oid, rid in scene.objects.items():
        cls, o = class_of(oid), mangle(oid)
        init.append(f"(objectType {o} {cls}Type)")
        init.append(f"(inReceptacle {o} {mangle(rid)})")
        init.append(f"(objectAtLocation {o} {mangle(scene.receptacles[rid])})")
        if cls in actions["Toggleable"]:
            init.append(f"(toggleable {o})")
            continue  # lamps stay where they are
        init.append(f"(pickupable {o})")
        if cls in constants.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {o})")
        for prop, predicate in (
            ("Cleanable", "cleanable"),
            ("Heatable", "heatable"),
            ("Coolable", "coolable"),
            ("Sliceable", "sliceable"),
        ):
            if cls in actions[prop]:
                init.append(f"({predicate} {o})")
    for rcls in rec_classes:
        for ocls in obj_classes:
            if ocls in can_contain.get(rcls, ()):
                init.append(f"(canContain {rcls}Type {ocls}Type)")

    goal = goal_library.gdict[goal_name]["pddl"].format(
        obj=scene.object_target,
        recep=scene.parent_target or "",
        toggle=scene.toggle_target or "",
        mrecep="",
    )
    # The library writes "#" for "-" in typed variables and closes the define block itself.
    goal = goal.replace("#", "-").strip()
    if not goal.endswith(")"):  # pragma: no cover - a different alfworld release
        raise RuntimeError(f"unexpected goal layout in alfworld's goal library: {goal!r}")
    goal = goal[:-1].rstrip()
    indent = "\n        "
    return (
        f"(define (problem priorcache_{scene.split}_{scene.task_type}_{scene.seed}_{scene.attempt})\n"
        f"    (:domain alfred)\n"
        f"    (:objects{indent}{indent.join(declare)}\n    )\n"
        f"    (:init{indent}{indent.join(init)}\n    )\n"
        f"    {goal}\n"
        f"    (:metric minimize (total-cost))\n"
        f")\n"
    )


def game_data(scene: Scene) -> dict[str, Any]:
    """The ALFWorld game file content (``game.tw-pddl``) for ``scene``, without a walkthrough."""
    import alfworld.info

    domain = Path(alfworld.info.ALFRED_PDDL_PATH).read_text(encoding="utf-8")
    grammar = Path(alfworld.info.ALFRED_TWL2_PATH).read_text(encoding="utf-8")
    if "UNKNOWN GOAL" not in grammar:  # pragma: no cover - a different alfworld release
        raise RuntimeError("alfred.twl2 has no 'UNKNOWN GOAL' placeholder for the task sentence")
    return {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", scene.task_sentence),
        "pddl_problem": pddl_problem(scene),
        "solvable": None,  # set by certification
        "generated": scene.to_json(),
    }


def traj_data(scene: Scene) -> dict[str, Any]:
    """The ``traj_data.json`` ALFWorld keeps beside each game: task type and ALFRED's task parameters.

    ALFWorld's experts read it (``AlfredExpert`` resets its hand-coded expert from it even when
    the planner is used).
    """
    return {
        "task_type": TASK_TYPES[scene.task_type],
        "pddl_params": {
            "object_target": scene.object_target,
            "parent_target": scene.parent_target or "",
            "toggle_target": scene.toggle_target or "",
            "mrecep_target": "",
            "object_sliced": False,
        },
        "scene": {"floor_plan": scene.floorplan},
        "generated_by": "priorcache",
    }
