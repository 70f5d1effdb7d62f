"""Record styles of the synthetic organizations: what a hospital, bank, lab, ... writes down.

A :class:`Style` describes one kind of organization: the attributes its entities have, profile
templates and question/answer templates. :func:`build_vocabulary` turns a style into the concrete
word lists of one organization (invented person names, ward or branch names, a subset of the
attribute values), so two organizations of the same style still use different vocabulary, and
:func:`render_entity` writes one entity as a profile record and a question/answer record.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["STYLES", "OrgVocabulary", "Style", "build_vocabulary", "new_key", "render_entity"]

_ONSETS = ("B", "C", "D", "F", "G", "H", "J", "K", "L", "M", "N", "P", "R", "S", "T", "V", "W",
           "Br", "Cl", "Dr", "Gr", "Kr", "Pr", "St", "Th", "Tr", "Sh", "Qu")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y")
_CODAS = ("", "l", "n", "r", "s", "th", "nd", "rk", "ll", "ss", "m", "x", "ck", "rn", "v")
_PLACEHOLDER = re.compile(r"\{(Word|Last|First|Code)\}")


@dataclass(frozen=True)
class Style:
    """How one kind of organization writes its records.

    Attributes
    ----------
    name : str
        Style name, e.g. ``"hospital"``.
    key : str
        Template of the entity key (who or what a record is about): ``"{First} {Last}"`` for a
        person, ``"{Code}"`` for a sample or shipment code.
    attributes : Mapping[str, tuple[str, ...]]
        Categorical attributes and their possible values; values may hold placeholders
        ``{Word}``, ``{Last}``, ``{First}`` or ``{Code}`` filled with organization-specific words.
    numbers : Mapping[str, tuple[int, int]]
        Integer attributes and their inclusive ranges.
    profiles : tuple[str, ...]
        Profile templates (``str.format`` over ``key``, ``site`` and every attribute).
    questions : tuple[tuple[str, str], ...]
        (question, answer) templates; a question/answer record holds two of them.
    """

    name: str
    key: str
    attributes: Mapping[str, tuple[str, ...]]
    numbers: Mapping[str, tuple[int, int]]
    profiles: tuple[str, ...]
    questions: tuple[tuple[str, str], ...]


STYLES: tuple[Style, ...] = (
    Style(
        name="hospital",
        key="{First} {Last}",
        attributes={
            "blood": ("O negative", "O positive", "A negative", "A positive", "B negative",
                      "B positive", "AB negative", "AB positive"),
            "condition": ("pneumonia", "a fractured wrist", "asthma", "a kidney infection",
                          "migraine", "appendicitis", "a concussion", "high blood pressure",
                          "anemia", "bronchitis", "a burned hand", "diabetes"),
            "medication": ("amoxicillin", "ibuprofen", "insulin", "salbutamol", "paracetamol",
                           "metformin", "iron tablets", "lisinopril", "codeine", "prednisone"),
            "ward": ("{Word} Ward", "Ward {Word}", "the {Word} Unit"),
            "doctor": ("Dr. {Last}",),
        },
        numbers={"age": (18, 94), "room": (100, 499)},
        profiles=(
            "Patient note: {key}, age {age}, was admitted to {ward} at {site} with {condition}. "
            "Blood type {blood}. {doctor} prescribed {medication}.",
            "Discharge summary for {key} ({age} years, room {room}): treated in {ward} for "
            "{condition} and sent home on {medication} by {doctor}.",
        ),
        questions=(
            ("What is the blood type of {key}?", "{blood}"),
            ("Why was {key} admitted?", "{condition}"),
            ("Which medication was {key} given?", "{medication}"),
            ("Who is the doctor of {key}?", "{doctor}"),
            ("How old is {key}?", "{age}"),
        ),
    ),
    Style(
        name="bank",
        key="{First} {Last}",
        attributes={
            "account": ("savings", "checking", "mortgage", "pension", "business", "student"),
            "occupation": ("a baker", "a pilot", "a carpenter", "a teacher", "a nurse",
                           "an engineer", "a farmer", "a florist", "an architect", "a tailor"),
            "risk": ("low", "medium", "high", "very low", "moderate"),
            "branch": ("{Word}", "{Word} Square", "North {Word}"),
            "advisor": ("{First} {Last}",),
        },
        numbers={"balance": (150, 98000), "since": (1985, 2023)},
        profiles=(
            "Client profile: {key}, {occupation}, holds a {account} account at the {branch} branch "
            "of {site} with a balance of {balance} euros. Risk profile: {risk}. "
            "Advisor: {advisor}.",
            "Account review: {key} has been a client of {site} since {since}, keeps a {account} "
            "account at {branch} and was rated {risk} risk by {advisor}.",
        ),
        questions=(
            ("What is the account balance of {key}?", "{balance} euros"),
            ("Which branch does {key} bank at?", "{branch}"),
            ("What is the risk profile of {key}?", "{risk}"),
            ("Who advises {key}?", "{advisor}"),
            ("What does {key} do for a living?", "{occupation}"),
        ),
    ),
    Style(
        name="lab",
        key="sample {Code}",
        attributes={
            "specimen": ("blood", "saliva", "soil", "river water", "leaf tissue", "urine",
                         "seawater", "yeast culture", "bone marrow", "pollen"),
            "assay": ("PCR", "ELISA", "mass spectrometry", "gel electrophoresis", "titration",
                      "culture growth", "flow cytometry", "sequencing"),
            "result": ("positive", "negative", "inconclusive", "contaminated", "within range",
                       "above threshold", "below detection"),
            "freezer": ("freezer {Word}", "rack {Word}", "the {Word} cold room"),
            "technician": ("{First} {Last}",),
        },
        numbers={"volume": (2, 250), "day": (1, 28)},
        profiles=(
            "Lab log: {key} ({specimen}, {volume} ml) was tested with {assay} at {site} on day "
            "{day}. Result: {result}. Stored in {freezer} by {technician}.",
            "Sample record: {technician} received {key}, {specimen}, on day {day}; the {assay} "
            "run came back {result} and the rest went to {freezer}.",
        ),
        questions=(
            ("What was the result for {key}?", "{result}"),
            ("Which assay was run on {key}?", "{assay}"),
            ("Where is {key} stored?", "{freezer}"),
            ("What kind of specimen is {key}?", "{specimen}"),
            ("Who handled {key}?", "{technician}"),
        ),
    ),
    Style(
        name="law",
        key="{First} {Last}",
        attributes={
            "matter": ("a contract dispute", "a divorce", "a tenancy claim", "an inheritance",
                       "a patent claim", "an unfair dismissal", "a boundary dispute",
                       "a defamation claim", "a company merger", "a traffic offence"),
            "court": ("the {Word} District Court", "the {Word} Court of Appeal",
                      "the {Word} Tribunal"),
            "status": ("settled", "pending", "won", "lost", "under appeal", "adjourned",
                       "in mediation"),
            "lawyer": ("counsel {Last}",),
            "opponent": ("{Word} Holdings", "{Word} and Sons", "{First} {Last}"),
        },
        numbers={"fee": (800, 60000), "year": (2005, 2024)},
        profiles=(
            "Case summary: {key} retained {site} in {year} for {matter} against {opponent}, "
            "heard at {court}. Lead: {lawyer}. Status: {status}.",
            "File note: the matter of {key} versus {opponent} ({matter}) before {court} is "
            "{status}; {lawyer} billed {fee} euros.",
        ),
        questions=(
            ("What is the case of {key} about?", "{matter}"),
            ("Who is the opposing party of {key}?", "{opponent}"),
            ("Which court hears the case of {key}?", "{court}"),
            ("What is the status of the case of {key}?", "{status}"),
            ("Who represents {key}?", "{lawyer}"),
        ),
    ),
    Style(
        name="logistics",
        key="shipment {Code}",
        attributes={
            "cargo": ("machine parts", "frozen fish", "furniture", "medical supplies", "coffee",
                      "textiles", "car tyres", "books", "glassware", "fertilizer", "bicycles"),
            "origin": ("{Word}port", "{Word} Docks", "{Word}ville"),
            "destination": ("{Word}burg", "{Word} Harbor", "{Word}stad"),
            "carrier": ("{Word} Freight", "{Word} Lines", "{Word} Express"),
            "state": ("delivered", "in transit", "delayed at customs", "awaiting pickup",
                      "returned", "lost"),
        },
        numbers={"weight": (40, 24000), "pallets": (1, 33)},
        profiles=(
            "Shipment log: {key} carries {weight} kg of {cargo} from {origin} to {destination} "
            "with {carrier} for {site}. Status: {state}.",
            "Dispatch note: {pallets} pallets of {cargo} left {origin} as {key}; {carrier} "
            "reports the load {state} on the way to {destination}.",
        ),
        questions=(
            ("Where is {key} going?", "{destination}"),
            ("What does {key} carry?", "{cargo}"),
            ("How heavy is {key}?", "{weight} kg"),
            ("Which carrier moves {key}?", "{carrier}"),
            ("What is the status of {key}?", "{state}"),
        ),
    ),
    Style(
        name="school",
        key="{First} {Last}",
        attributes={
            "subject": ("mathematics", "history", "biology", "music", "geography", "chemistry",
                        "literature", "art", "physics", "languages"),
            "club": ("the chess club", "the choir", "the robotics club", "the drama group",
                     "the swimming team", "the debate society", "the garden club"),
            "teacher": ("Ms. {Last}", "Mr. {Last}"),
            "guardian": ("{First} {Last}",),
            "house": ("{Word} House",),
        },
        numbers={"grade": (1, 12), "score": (41, 100)},
        profiles=(
            "Student record: {key}, grade {grade}, in {house} at {site}, homeroom teacher "
            "{teacher}. Best subject: {subject}. Average score {score}. Member of {club}.",
            "Report card: {key} (grade {grade}) scored {score} on average, excels in {subject} "
            "and joined {club}; guardian {guardian} was informed by {teacher}.",
        ),
        questions=(
            ("What grade is {key} in?", "{grade}"),
            ("What is the best subject of {key}?", "{subject}"),
            ("Who is the homeroom teacher of {key}?", "{teacher}"),
            ("What is the average score of {key}?", "{score}"),
            ("Which club did {key} join?", "{club}"),
        ),
    ),
)

_SITE_PATTERNS = {
    "hospital": ("{Word} General Hospital", "St. {First} Hospital", "{Word} Clinic"),
    "bank": ("{Word} Bank", "{Word} Savings", "the Bank of {Word}"),
    "lab": ("{Word} Laboratories", "the {Word} Institute", "{Word} Bio Lab"),
    "law": ("{Last} and {Last}", "{Word} Legal", "{Last} Law Partners"),
    "logistics": ("{Word} Logistics", "{Word} Cargo", "{Word} Transport"),
    "school": ("{Word} Academy", "{Word} High School", "St. {First} School"),
}


@dataclass(frozen=True)
class OrgVocabulary:
    """The concrete words one organization uses (invented names and chosen attribute values).

    Attributes
    ----------
    style : Style
        The organization's style.
    site : str
        The organization's own name as it appears in its records, e.g. ``"Velmor Clinic"``.
    first_names, last_names : tuple of str
        Invented person names used only by this organization.
    code_prefix : str
        Two-letter prefix of entity codes (samples, shipments), e.g. ``"KT"``.
    values : Mapping[str, tuple[str, ...]]
        For each categorical attribute, the values this organization uses.
    """

    style: Style
    site: str
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    code_prefix: str
    values: Mapping[str, tuple[str, ...]]


def _invent_word(rng: random.Random, syllables: int) -> str:
    # Open syllables and one final coda keep invented names short and pronounceable.
    parts = []
    for _ in range(syllables):
        onset = rng.choice(_ONSETS)
        vowel = rng.choice(_VOWELS)
        if onset == "Qu" and vowel[0] == "u":
            vowel = "a"
        parts.append(onset.lower() + vowel)
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _distinct_words(rng: random.Random, count: int, syllables: tuple[int, ...]) -> tuple[str, ...]:
    words: dict[str, None] = {}
    while len(words) < count:
        words[_invent_word(rng, rng.choice(syllables))] = None
    return tuple(words)


def _fill(pattern: str, rng: random.Random, first: tuple[str, ...], last: tuple[str, ...],
          words: tuple[str, ...], code_prefix: str) -> str:
    def one(match: re.Match[str]) -> str:
        slot = match.group(1)
        if slot == "First":
            return rng.choice(first)
        if slot == "Last":
            return rng.choice(last)
        if slot == "Code":
            return f"{code_prefix}-{rng.randint(1000, 9999)}"
        return rng.choice(words)

    return _PLACEHOLDER.sub(one, pattern)


def build_vocabulary(style: Style, rng: random.Random) -> OrgVocabulary:
    """Draw one organization's vocabulary for ``style`` from ``rng``.

    Parameters
    ----------
    style : Style
        The organization's style.
    rng : random.Random
        Generator seeded for this organization only.

    Returns
    -------
    OrgVocabulary
        Invented names, the organization's site name and its attribute values.
    """
    first = _distinct_words(rng, 40, (1, 2))
    last = _distinct_words(rng, 40, (2, 3))
    words = _distinct_words(rng, 12, (2,))
    code_prefix = rng.choice(_ONSETS)[0] + rng.choice("ABCDEFGHJKLMNPRSTVWXZ")
    site = _fill(rng.choice(_SITE_PATTERNS[style.name]), rng, first, last, words, code_prefix)
    values: dict[str, tuple[str, ...]] = {}
    for attribute, patterns in style.attributes.items():
        if any(_PLACEHOLDER.search(p) for p in patterns):
            # Organization-specific entities (wards, doctors, carriers): a few distinct fills.
            chosen: dict[str, None] = {}
            for _ in range(200):
                chosen[_fill(rng.choice(patterns), rng, first, last, words, code_prefix)] = None
                if len(chosen) == 6:
                    break
            values[attribute] = tuple(chosen)
        else:
            # A subset of the shared values, so attribute frequencies differ between organizations.
            keep = max(3, (len(patterns) * 7) // 10)
            values[attribute] = tuple(rng.sample(patterns, keep))
    return OrgVocabulary(style, site, first, last, code_prefix, values)


def new_key(vocabulary: OrgVocabulary, rng: random.Random) -> str:
    """Draw an entity key (a person name or an entity code); may repeat earlier keys."""
    return _fill(vocabulary.style.key, rng, vocabulary.first_names, vocabulary.last_names, (),
                 vocabulary.code_prefix)


def render_entity(vocabulary: OrgVocabulary, key: str, rng: random.Random) -> tuple[str, str]:
    """Write the entity ``key`` as a profile record and a two-question question/answer record.

    Parameters
    ----------
    vocabulary : OrgVocabulary
        The organization's vocabulary.
    key : str
        The entity key (unique within the organization).
    rng : random.Random
        The organization's generator.

    Returns
    -------
    tuple of (str, str)
        The profile text and the question/answer text.
    """
    style = vocabulary.style
    fields: dict[str, str] = {"key": key, "site": vocabulary.site}
    for attribute, values in vocabulary.values.items():
        fields[attribute] = rng.choice(values)
    for attribute, (low, high) in style.numbers.items():
        fields[attribute] = str(rng.randint(low, high))
    profile = rng.choice(style.profiles).format(**fields)
    pairs = rng.sample(style.questions, 2)
    qa = " ".join(f"Q: {q.format(**fields)} A: {a.format(**fields)}." for q, a in pairs)
    return profile, qa
