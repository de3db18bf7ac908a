"""Write ``corpus.txt``, the demo's default training text: simple English-like stories from a small random grammar.

The text is made here, not downloaded, so it is free of any licence. It is varied (thousands of distinct sentences
from a few hundred words) but structured (grammar, punctuation, capitals, dialogue, wrapped lines, chapter headings),
so a character-level model can learn a good deal of it in a minute: spelling first, then common word sequences.

Run ``python numbarnn/data/make_corpus.py`` to regenerate it; the output is the same for the same ``--seed``.
"""

import argparse
import random
import textwrap
from pathlib import Path

NAMES = [
    "Anna",
    "Ben",
    "Clara",
    "Daniel",
    "Edith",
    "Felix",
    "Grace",
    "Henry",
    "Iris",
    "James",
    "Kate",
    "Leo",
    "Martha",
    "Nathan",
    "Olive",
    "Peter",
    "Rose",
    "Samuel",
    "Tess",
    "Walter",
    "the miller",
    "the old captain",
    "the baker",
    "the young doctor",
    "the teacher",
    "the farmer's wife",
    "the stranger",
    "the shepherd",
]
PLACES = [
    "the harbour",
    "the market",
    "the old mill",
    "the river",
    "the church",
    "the forest",
    "the village green",
    "the bridge",
    "the station",
    "the garden",
    "the hill above the town",
    "the kitchen",
    "the library",
    "the farm",
    "the inn",
    "the lighthouse",
    "the orchard",
    "the school",
    "the long road",
    "the meadow",
]
NOUNS = [
    "letter",
    "lamp",
    "basket",
    "horse",
    "boat",
    "key",
    "book",
    "coat",
    "window",
    "door",
    "bell",
    "map",
    "cup",
    "table",
    "candle",
    "dog",
    "cat",
    "bird",
    "apple",
    "loaf",
    "box",
    "ring",
    "clock",
    "stone",
    "rope",
    "cart",
    "hat",
    "song",
    "story",
    "garden",
    "field",
    "fire",
    "wheel",
    "ladder",
    "bottle",
    "chair",
    "kettle",
]
IRREGULAR_PLURALS = {"box": "boxes", "loaf": "loaves", "story": "stories", "bottle": "bottles", "match": "matches"}
ADJECTIVES = [
    "old",
    "small",
    "large",
    "quiet",
    "bright",
    "dark",
    "heavy",
    "little",
    "warm",
    "cold",
    "red",
    "green",
    "broken",
    "empty",
    "golden",
    "wet",
    "dusty",
    "strange",
    "new",
    "wooden",
    "white",
    "careful",
    "tired",
    "happy",
    "gentle",
    "narrow",
    "crooked",
    "silver",
    "simple",
    "long",
]
TRANSITIVE = [
    "found",
    "carried",
    "opened",
    "closed",
    "painted",
    "mended",
    "watched",
    "lost",
    "lifted",
    "cleaned",
    "bought",
    "sold",
    "hid",
    "brought",
    "kept",
    "washed",
    "counted",
    "dropped",
    "followed",
    "remembered",
]
INTRANSITIVE = [
    "laughed",
    "waited",
    "slept",
    "sang",
    "walked home",
    "sat down",
    "stood still",
    "listened",
    "smiled",
    "sighed",
    "worked until dark",
    "looked away",
    "ran",
    "said nothing",
    "wept",
]
TIMES = [
    "In the morning",
    "At dawn",
    "At noon",
    "In the evening",
    "At night",
    "On Monday",
    "On Sunday",
    "After dinner",
    "Before breakfast",
    "Later that day",
    "In the spring",
    "In the winter",
    "At last",
    "The next day",
    "Once",
    "Every Saturday",
    "Long ago",
]
WEATHER = [
    "the rain fell softly",
    "the wind was cold",
    "the sun was warm",
    "snow lay on the roofs",
    "a thin fog hung over the water",
    "the sky was clear and blue",
    "the air smelled of bread",
    "the leaves were turning brown",
    "thunder rolled over the hills",
    "the stars were out",
]
REASONS = [
    "it was late",
    "the bell had rung",
    "nobody else would go",
    "the road was dry",
    "the lamp had gone out",
    "there was work to do",
    "the letter said so",
    "the dog would not stop barking",
    "it was market day",
]
FEELINGS = ["glad", "afraid", "tired", "hungry", "surprised", "sorry", "proud", "sure", "angry", "lonely"]
NUMBERS = [
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "twenty",
    "a hundred",
    "many",
    "a few",
    "several",
]
PREPOSITIONS = ["near", "behind", "beside", "under", "inside", "across", "beyond", "at", "by", "above"]
SAYINGS = [
    "A stitch in time saves nine.",
    "Still waters run deep.",
    "Make hay while the sun shines.",
    "The early bird catches the worm.",
    "Many hands make light work.",
    "Look before you leap.",
    "All that glitters is not gold.",
    "Every cloud has a silver lining.",
    "Slow and steady wins the race.",
    "Where there is smoke there is fire.",
    "A friend in need is a friend indeed.",
    "Better late than never.",
    "Actions speak louder than words.",
    "Practice makes perfect.",
]
QUOTES = [
    "Where is the {noun}?",
    "I have not seen the {noun} since {time_lower}.",
    "Come with me to {place}.",
    "The {noun} is {adj}, but it will do.",
    "Do you remember the {adj} {noun}?",
    "We must hurry.",
    "I am {feeling} to hear it.",
    "Leave the {noun} by the door.",
    "It is only a {noun}.",
    "Who {verb} the {noun}?",
    "There are {number} {nouns} in {place}.",
    "Thank you, {name_plain}.",
]


def capitalise(text):
    return text[0].upper() + text[1:]


def roman(number):
    numerals = [(100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    result = ""
    for value, letters in numerals:
        while number >= value:
            result += letters
            number -= value
    return result


class Grammar:
    def __init__(self, rng):
        self.rng = rng

    def pick(self, words):
        return self.rng.choice(words)

    def plural(self, noun):
        return IRREGULAR_PLURALS.get(noun, noun + "s")

    def article(self, adjective_or_noun):
        return "an" if adjective_or_noun[0] in "aeiou" else "a"

    def thing(self):
        """A noun phrase such as 'the old lamp', 'a wooden box' or 'her coat'."""
        noun = self.pick(NOUNS)
        if self.rng.random() < 0.6:
            adjective = self.pick(ADJECTIVES)
            determiner = self.pick(["the", "the", self.article(adjective), "his", "her", "their"])
            return f"{determiner} {adjective} {noun}"
        return f"{self.pick(['the', 'the', self.article(noun), 'his', 'her'])} {noun}"

    def name(self):
        return self.pick(NAMES)

    def plain_name(self):
        return self.pick([name for name in NAMES if not name.startswith("the ")])

    def quote(self):
        template = self.pick(QUOTES)
        return template.format(
            noun=self.pick(NOUNS),
            nouns=self.plural(self.pick(NOUNS)),
            adj=self.pick(ADJECTIVES),
            place=self.pick(PLACES),
            time_lower=self.pick(TIMES).lower(),
            feeling=self.pick(FEELINGS),
            verb=self.pick(TRANSITIVE),
            number=self.pick(NUMBERS),
            name_plain=self.plain_name(),
        )

    def quoted_before_speaker(self):
        """A quote placed before 'said ...': a statement ends in a comma there, a question keeps its mark."""
        text = self.quote()
        return text[:-1] + "," if text.endswith(".") else text

    def sentence(self):
        roll = self.rng.random()
        if roll < 0.18:
            return (
                f"{self.pick(TIMES)}, {self.name()} {self.pick(TRANSITIVE)} {self.thing()} "
                f"{self.pick(PREPOSITIONS)} {self.pick(PLACES)}."
            )
        if roll < 0.30:
            return f"{capitalise(self.name())} {self.pick(INTRANSITIVE)}, because {self.pick(REASONS)}."
        if roll < 0.42:
            speaker = self.name()
            if self.rng.random() < 0.5:
                return f'"{self.quoted_before_speaker()}" said {speaker}.'
            return f'{capitalise(speaker)} said, "{self.quote()}"'
        if roll < 0.52:
            return f"{capitalise(self.pick(WEATHER))}, and {self.name()} was {self.pick(FEELINGS)}."
        if roll < 0.62:
            noun, other = self.pick(NOUNS), self.pick(NOUNS)
            return f"The {noun} was {self.pick(ADJECTIVES)}, and the {other} was {self.pick(ADJECTIVES)}."
        if roll < 0.70:
            return (
                f"There were {self.pick(NUMBERS)} {self.plural(self.pick(NOUNS))} "
                f"{self.pick(PREPOSITIONS)} {self.pick(PLACES)}."
            )
        if roll < 0.78:
            first, second = self.name(), self.name()
            return f"{capitalise(first)} and {second} went to {self.pick(PLACES)} and {self.pick(INTRANSITIVE)}."
        if roll < 0.84:
            return f'"{self.quoted_before_speaker()}" asked {self.name()}, and {self.name()} {self.pick(INTRANSITIVE)}.'
        if roll < 0.90:
            return (
                f"{capitalise(self.name())} {self.pick(TRANSITIVE)} {self.thing()}, then "
                f"{self.pick(TRANSITIVE)} {self.thing()}."
            )
        if roll < 0.95:
            return f"Nobody knew who had {self.pick(TRANSITIVE)} {self.thing()}."
        return f'As {self.name()} always said, "{self.pick(SAYINGS)}"'

    def paragraph(self):
        return " ".join(self.sentence() for _ in range(self.rng.randint(3, 7)))


def make_corpus(size, seed):
    """About ``size`` characters of text: chapters of wrapped paragraphs."""
    grammar = Grammar(random.Random(seed))
    pieces, length, chapter = [], 0, 0
    while length < size:
        chapter += 1
        heading = f"CHAPTER {roman(chapter)}.\n\n"
        pieces.append(heading)
        length += len(heading)
        for _ in range(grammar.rng.randint(12, 30)):
            paragraph = textwrap.fill(grammar.paragraph(), width=72) + "\n\n"
            pieces.append(paragraph)
            length += len(paragraph)
    return "".join(pieces)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300_000, help="approximate length in characters")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("corpus.txt"))
    args = parser.parse_args()
    args.output.write_text(make_corpus(args.size, args.seed), encoding="utf-8")


if __name__ == "__main__":
    main()
