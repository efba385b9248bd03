"""The demo captions: the objects named imperfectly (synonyms, some left out, negated distractors, a
few wrong mentions); a small object is usually named and a large one most often left out, so image
and caption carry complementary evidence."""
from __future__ import annotations

import numpy as np

from mlc_utils.data.demo.labels import CLASS_NAMES, LARGE, NUM_CLASSES, PERSON, SMALL, TARGET_FREQUENCY

SYNONYMS: dict[int, tuple[str, ...]] = {
    1: ("a man", "a woman", "a person", "a boy", "a girl", "a child", "people", "a skier", "a player",
        "a lady", "a guy", "two men", "a group of people"),
    2: ("a bicycle", "a bike", "two bikes", "a red bicycle"),
    3: ("a car", "cars", "a sedan", "a taxi", "a vehicle", "a parked car"),
    4: ("a motorcycle", "a motorbike", "a scooter", "a dirt bike"),
    5: ("an airplane", "a plane", "a jet", "an aircraft", "a jumbo jet"),
    6: ("a bus", "a double decker bus", "a city bus", "a school bus"),
    7: ("a train", "a locomotive", "a passenger train", "a subway car"),
    8: ("a truck", "a pickup", "a lorry", "a delivery van", "a vehicle"),
    9: ("a boat", "a sailboat", "a ship", "a canoe", "a yacht"),
    10: ("a traffic light", "a stop light", "traffic signals", "a signal"),
    11: ("a fire hydrant", "a hydrant", "a red hydrant"),
    12: ("a street sign", "street signs"),
    13: ("a stop sign", "a red sign", "a sign"),
    14: ("a parking meter", "a meter", "parking meters"),
    15: ("a bench", "a park bench", "a wooden bench", "a seat"),
    16: ("a bird", "a pigeon", "a seagull", "birds", "a duck"),
    17: ("a cat", "a kitten", "a kitty", "a tabby cat"),
    18: ("a dog", "a puppy", "a pup", "a dog on a leash"),
    19: ("a horse", "a pony", "horses", "a brown horse"),
}
_NEG_NOUN = {c: ("people" if c == PERSON else CLASS_NAMES[c]) for c in range(1, NUM_CLASSES)}
_PLACES = ("on a city street", "in a park", "near the water", "at the station", "on the road", "in a parking lot",
           "outside a building", "in a field", "on a sunny day", "at night", "", "")
_SINGLE = ("{L} {P}.", "There is {L} {P}.", "A photo of {L} {P}.", "An image showing {L}.", "{L} can be seen {P}.",
           "Close up of {L}.", "This picture shows {L} {P}.", "{L} {P} today.")
_MULTI = ("{F} next to {R} {P}.", "{F} standing near {R}.", "{F} {P} with {R} in the background.",
          "{F} and {R} {P}.", "{F} beside {R}.", "{F} sitting close to {R} {P}.")
_FILLERS = ("A view of a busy street.", "A picture taken on a sunny day.", "An outdoor scene on a cloudy afternoon.",
            "A blurry photo of a street corner.", "Some things are in this picture.", "A scene in the city.")
_NEGATIONS = (" with no {N} in sight", ", but no {N} anywhere", " next to where {A} used to be",
              " and not a single {N}")
def _join(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    comma = "," if len(phrases) > 2 and rng.random() < 0.4 else ""  # the Oxford comma, sometimes
    return ", ".join(phrases[:-1]) + f"{comma} and {phrases[-1]}"


def pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _absent_class(rng: np.random.Generator, present: set[int]) -> int:
    choices = [c for c in TARGET_FREQUENCY if c not in present]
    weights = np.array([TARGET_FREQUENCY[c] if c != PERSON else 0.1 for c in choices])
    return choices[int(rng.choice(len(choices), p=weights / weights.sum()))]


def _tidy(text: str) -> str:
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" .", ".").replace(" ,", ",")
    return text[0].upper() + text[1:]


def draw_caption(rng: np.random.Generator, instances: list[tuple[int, float]], labels: list[int]) -> tuple[str, dict]:
    """A caption of the image's ``instances`` and the counts the summary reports (objects, mentioned,
    negation, wrong); :func:`~mlc_utils.data.demo.quirks.with_quirks` goes on with the same ``rng``."""
    largest = {}
    for cls, size in instances:
        largest[cls] = max(size, largest.get(cls, 0.0))
    mentioned, stats = [], {"objects": len(labels), "mentioned": 0, "negation": 0, "wrong": 0}
    for cls in labels:
        smallness = float(np.clip((LARGE[1] - largest[cls]) / (LARGE[1] - SMALL[0]), 0.0, 1.0))
        if rng.random() < 0.55 + 0.4 * smallness:  # small: nearly always named; large: often left out
            mentioned.append(pick(rng, SYNONYMS[cls]))
            stats["mentioned"] += 1
    present = set(labels)
    if rng.random() < 0.05:  # a plain wrong mention
        mentioned.append(pick(rng, SYNONYMS[_absent_class(rng, present)]))
        stats["wrong"] = 1
    if rng.random() < 0.03:  # a class that is never labelled
        mentioned.append(pick(rng, SYNONYMS[12]))
    mentioned = [mentioned[i] for i in rng.permutation(len(mentioned))]
    place = pick(rng, _PLACES)
    if not mentioned:
        text = pick(rng, _FILLERS)
    elif len(mentioned) == 1 or rng.random() < 0.5:
        text = pick(rng, _SINGLE).format(L=_join(mentioned, rng), P=place)
    else:
        text = pick(rng, _MULTI).format(F=mentioned[0], R=_join(mentioned[1:], rng), P=place)
    text = _tidy(text)
    if rng.random() < 0.08:  # a negated distractor: the word is there, the object is not
        absent = _absent_class(rng, present)
        form = pick(rng, _NEGATIONS)
        text = text[:-1] + form.format(N=_NEG_NOUN[absent], A=pick(rng, SYNONYMS[absent])) + "."
        stats["negation"] = 1
    return text, stats
