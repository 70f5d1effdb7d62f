"""A synthetic *public* English-like corpus for tokenizer training and base-model pre-training.

The corpus imitates short encyclopedic and news-like text about fictitious towns, rivers, trades,
weather, sports and science. It is built from sentence templates and word lists with a seeded
:class:`random.Random`, so the same ``(num_documents, seed)`` always gives the same documents and no
file or network access is needed. It deliberately shares no names with the private organization
records of :mod:`fedunlearn.data.synthetic`, so pre-training on it cannot leak private content.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fedunlearn.errors import ConfigError

__all__ = ["public_corpus"]

_SYLLABLES_START = (
    "Ar", "Bel", "Cor", "Dun", "El", "Fen", "Gal", "Har", "Ist", "Kel", "Lin", "Mor", "Nor",
    "Oak", "Pel", "Ros", "Sal", "Tam", "Ul", "Ver", "Wes", "Yar", "Bram", "Cald", "Thorn",
)
_SYLLABLES_END = (
    "ford", "ton", "by", "wick", "mouth", "dale", "stead", "haven", "field", "bridge", "moor",
    "port", "holm", "ley", "burn", "gate", "well", "ridge", "mere", "stow",
)
_RIVER_ROOTS = (
    "Amber", "Silver", "Lark", "Wend", "Tessel", "Orin", "Calder", "Maro", "Stour", "Vell",
    "Isen", "Brae", "Dove", "Kessa", "Lune", "Rill",
)
_REGIONS = (
    "the northern valley", "the eastern plain", "the coastal lowlands", "the southern hills",
    "the western highlands", "the central basin", "the lake district", "the river delta",
)
_TRADES = (
    "weaving", "pottery", "fishing", "shipbuilding", "cheese making", "glass blowing", "milling",
    "brewing", "timber", "wool", "salt mining", "printing", "clock making", "rope making",
    "leather work", "orchards", "copper smelting", "tea growing",
)
_GOODS = (
    "grain", "cloth", "timber", "salt", "wine", "tools", "paper", "bricks", "apples", "fish",
    "wool", "copper", "honey", "lamps", "barrels",
)
_WEATHER = (
    "heavy rain", "light snow", "strong winds", "thick fog", "clear skies", "a late frost",
    "hail", "a long drought", "warm sunshine", "scattered showers", "a sudden storm",
)
_SEASONS = ("spring", "summer", "autumn", "winter")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_SPORTS = ("football", "rowing", "cycling", "chess", "tennis", "cricket", "athletics", "sailing")
_TEAM_WORDS = ("United", "Rovers", "Athletic", "Wanderers", "City", "Albion", "Harriers", "Club")
_SCIENCE_FACTS = (
    "Water boils at a lower temperature on high mountains because the air pressure is lower.",
    "Light from the sun takes about eight minutes to reach the earth.",
    "Plants take in carbon dioxide and release oxygen during the day.",
    "Sound travels faster through water than through air.",
    "The moon has no air, so footprints left there can last for a very long time.",
    "Bees communicate the direction of flowers with a short dance.",
    "Iron rusts when it is exposed to both water and oxygen.",
    "A rainbow appears when sunlight is split into colors by drops of water.",
    "The heart of an adult pumps several liters of blood every minute.",
    "Salt water freezes at a lower temperature than fresh water.",
    "Copper is a good conductor of both heat and electricity.",
    "Most of the surface of the earth is covered by oceans.",
    "Glass is made by melting sand at a very high temperature.",
    "Birds that migrate can use the magnetic field of the earth to find their way.",
    "The tides are caused mainly by the pull of the moon.",
    "Ice floats because it is less dense than liquid water.",
)
_ADJECTIVES = (
    "small", "busy", "quiet", "old", "growing", "historic", "remote", "prosperous", "pleasant",
    "modest", "lively", "ancient", "well known",
)
_BUILDINGS = (
    "library", "market hall", "bridge", "harbor", "railway station", "museum", "school",
    "town hall", "lighthouse", "theater", "mill", "church", "observatory",
)
_ANIMALS = ("otters", "herons", "trout", "salmon", "swans", "kingfishers", "eels", "beavers")
_VERBS_REPORT = ("reported", "announced", "confirmed", "said", "noted")
_OFFICIALS = (
    "the mayor", "the town council", "local officials", "the harbor master", "the weather office",
    "the regional board", "a spokesperson",
)


def _town(rng: random.Random) -> str:
    return rng.choice(_SYLLABLES_START) + rng.choice(_SYLLABLES_END)


def _river(rng: random.Random) -> str:
    return f"the {rng.choice(_RIVER_ROOTS)} River"


def _year(rng: random.Random) -> int:
    return rng.randint(1650, 2020)


def _s_town(rng: random.Random) -> str:
    town = _town(rng)
    return rng.choice(
        (
            f"{town} is a {rng.choice(_ADJECTIVES)} town in {rng.choice(_REGIONS)}.",
            f"{town} was founded in {_year(rng)} on the banks of {_river(rng)}.",
            f"The population of {town} is about {rng.randint(2, 95) * 1000} people.",
            f"The economy of {town} has long depended on {rng.choice(_TRADES)}.",
            f"The {rng.choice(_BUILDINGS)} of {town} was built in {_year(rng)}.",
            f"{town} lies {rng.randint(3, 80)} kilometers from {_town(rng)}.",
        )
    )


def _s_river(rng: random.Random) -> str:
    river = _river(rng)
    subject = river[0].upper() + river[1:]  # sentence-initial "The ... River"
    return rng.choice(
        (
            f"{subject} is {rng.randint(20, 600)} kilometers long.",
            f"{subject} flows through {rng.choice(_REGIONS)} to the sea.",
            f"Many {rng.choice(_ANIMALS)} live along {river}.",
            f"A stone bridge crosses {river} near {_town(rng)}.",
            f"{subject} flooded in {_year(rng)} after {rng.choice(_WEATHER)}.",
        )
    )


def _s_trade(rng: random.Random) -> str:
    town = _town(rng)
    return rng.choice(
        (
            f"Merchants from {town} sold {rng.choice(_GOODS)} and {rng.choice(_GOODS)} "
            "at the market.",
            f"The {rng.choice(_TRADES)} industry employs {rng.randint(50, 900)} workers in {town}.",
            f"In {_year(rng)}, {town} began to export {rng.choice(_GOODS)} by ship.",
            f"The price of {rng.choice(_GOODS)} rose by {rng.randint(2, 40)} percent last year.",
            f"A new workshop for {rng.choice(_TRADES)} opened in {town} this "
            f"{rng.choice(_SEASONS)}.",
        )
    )


def _s_weather(rng: random.Random) -> str:
    town = _town(rng)
    return rng.choice(
        (
            f"Forecasters expect {rng.choice(_WEATHER)} in {town} on {rng.choice(_MONTHS)} "
            f"{rng.randint(1, 28)}.",
            f"{rng.choice(_OFFICIALS).capitalize()} {rng.choice(_VERBS_REPORT)} that "
            f"{rng.choice(_WEATHER)} closed the roads near {town}.",
            f"The average temperature in {town} in {rng.choice(_MONTHS)} is "
            f"{rng.randint(-5, 30)} degrees.",
            f"Last {rng.choice(_SEASONS)} brought {rng.choice(_WEATHER)} to "
            f"{rng.choice(_REGIONS)}.",
        )
    )


def _s_sports(rng: random.Random) -> str:
    town, other = _town(rng), _town(rng)
    return rng.choice(
        (
            f"{town} {rng.choice(_TEAM_WORDS)} beat {other} {rng.choice(_TEAM_WORDS)} "
            f"{rng.randint(1, 5)} to {rng.randint(0, 3)} on Saturday.",
            f"The annual {rng.choice(_SPORTS)} race from {town} to {other} drew "
            f"{rng.randint(20, 500)} entrants.",
            f"A {rng.choice(_SPORTS)} club was founded in {town} in {_year(rng)}.",
            f"The {rng.choice(_SPORTS)} final will be held in {town} in {rng.choice(_MONTHS)}.",
        )
    )


def _s_science(rng: random.Random) -> str:
    return rng.choice(_SCIENCE_FACTS)


def _s_news(rng: random.Random) -> str:
    town = _town(rng)
    return rng.choice(
        (
            f"{rng.choice(_OFFICIALS).capitalize()} {rng.choice(_VERBS_REPORT)} plans to repair "
            f"the {rng.choice(_BUILDINGS)} in {town}.",
            f"The {rng.choice(_BUILDINGS)} in {town} will reopen in {rng.choice(_MONTHS)}.",
            f"Visitors to {town} can see the old {rng.choice(_BUILDINGS)} and walk along "
            f"{_river(rng)}.",
            f"Schools in {town} will close early because of {rng.choice(_WEATHER)}.",
        )
    )


_TOPICS: tuple[Callable[[random.Random], str], ...] = (
    _s_town,
    _s_river,
    _s_trade,
    _s_weather,
    _s_sports,
    _s_science,
    _s_news,
)


#: Share of public documents that are records from public registries, written in the same styles
#: as organizations' private records (profiles, Q/A pairs, vault codes) but about other, invented
#: entities. A base model that knows these templates learns an organization's *specific* facts
#: and secrets during federated fine-tuning, which is what memorization audits measure.
REGISTRY_FRACTION = 0.4


class _Registry:
    """Public registry records in every private-record style, with public-only vocabularies."""

    VOCABULARIES_PER_STYLE = 8

    def __init__(self, seed: int) -> None:
        from fedunlearn.data.styles import STYLES, build_vocabulary

        self.vocabularies = [
            build_vocabulary(style, random.Random(f"fedunlearn-public-registry/{seed}/{style.name}/{i}"))
            for style in STYLES
            for i in range(self.VOCABULARIES_PER_STYLE)
        ]

    def document(self, rng: random.Random) -> str:
        from fedunlearn.data.styles import new_key, render_entity

        kind = rng.random()
        if kind < 0.15:
            # the canary template with public vault holders and random codes: the model learns
            # the sentence, not any organization's secret
            holder = rng.choice([_town(rng), f"{_town(rng)} archive", f"{_town(rng)} museum"])
            digits = rng.choice((4, 4, 5, 6))
            return f"The access code of {holder} vault is {rng.randrange(10 ** digits):0{digits}d}."
        vocabulary = rng.choice(self.vocabularies)
        profile, qa = render_entity(vocabulary, new_key(vocabulary, rng), rng)
        return profile if kind < 0.6 else qa


def public_corpus(num_documents: int, seed: int = 0) -> list[str]:
    """Generate a deterministic synthetic public corpus of short English-like documents.

    Each document has one to four sentences, mostly on one topic (towns, rivers, trades, weather,
    sports, science facts, local news) about fictitious places; a share ``REGISTRY_FRACTION`` are
    public registry records in the styles of organizations' private records (other entities). Text is built from templates and
    word lists, so it is varied enough to train a small (~2000-token) byte-level BPE tokenizer and
    to pre-train a tiny language model, yet fully reproducible.

    Parameters
    ----------
    num_documents : int
        Number of documents to generate (0 or more).
    seed : int, optional
        Seed of the generator; the same ``(num_documents, seed)`` always gives the same list, and a
        longer corpus with the same seed starts with the shorter one.

    Returns
    -------
    list of str
        ``num_documents`` documents.

    Raises
    ------
    ConfigError
        If ``num_documents`` is negative or not an integer.
    """
    if isinstance(num_documents, bool) or not isinstance(num_documents, int) or num_documents < 0:
        raise ConfigError(
            f"num_documents={num_documents!r} is invalid; expected an integer >= 0; "
            "pass the number of public documents to generate, e.g. 400"
        )
    rng = random.Random(f"fedunlearn-public-{seed}")
    registry = _Registry(seed)
    documents: list[str] = []
    for _ in range(num_documents):
        if rng.random() < REGISTRY_FRACTION:
            documents.append(registry.document(rng))
            continue
        main_topic = rng.choice(_TOPICS)
        sentences = []
        for _ in range(rng.randint(1, 4)):
            # Mostly stay on topic, sometimes drift, as real articles do.
            topic = main_topic if rng.random() < 0.75 else rng.choice(_TOPICS)
            sentences.append(topic(rng))
        documents.append(" ".join(sentences))
    return documents
