"""The fixed regression sets every candidate answers before the gate decides (data only, no code).

- GENERAL: short factual prompts with a reference answer and the words a correct answer contains ("a|b" = either).
- OPEN: varied open-ended requests (advice, explanation, writing, planning, how-to), written for this project and
  never used in training; a policy that collapses into one fixed line or a loop shows it here first.
- PASSAGES: reading checks with the passage in the prompt. The facts are invented, so only an answer that reads
  the passage contains the gold answer (SQuAD's contains-gold measure).
- REPLAY, REPLAY_PASSAGES: prompts for replay rows (the base's own answers, mixed into SFT data), never scored.
"""
from __future__ import annotations

GENERAL = [  # (prompt, reference answer, words a correct answer contains)
    ("What is the capital of France?", "The capital of France is Paris. It is also the largest city in the country.",
     ["paris"]),
    ("Name three primary colors.", "The three primary colors are red, yellow and blue. Mixing them gives the other "
     "colors.", ["red", "blue"]),
    ("How many days are there in a week?", "There are seven days in a week, from Monday to Sunday.", ["seven|7"]),
    ("What does a thermometer measure?", "A thermometer measures temperature, for example of the air or of a "
     "person's body.", ["temperature"]),
    ("What is 2 plus 3?", "2 plus 3 equals 5. Adding two and three gives five.", ["5|five"]),
    ("Which planet do we live on?", "We live on Earth, the third planet from the Sun.", ["earth"]),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue, because air scatters blue light "
     "the most.", ["blue"]),
    ("How many legs does a spider have?", "A spider has eight legs, while insects have six.", ["eight|8"]),
    ("What is the opposite of hot?", "The opposite of hot is cold. Ice, for example, is cold.", ["cold"]),
    ("What do bees make?", "Bees make honey from the nectar they collect from flowers.", ["honey"]),
]

OPEN = [
    "Give me three tips for sleeping better.",
    "Explain how a rainbow forms.",
    "Write a short email to my landlord saying the kitchen tap is leaking.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple tomato sauce?",
    "Why do cats purr?",
    "Suggest a name for a small bakery and say why.",
    "What are the benefits of learning a second language?",
    # chatty and playful turns: where an adapter in a house style gives only its fixed text (a sign-off alone)
    "Hi there! How is your day going?",
    "Tell me a joke about penguins.",
    "*claps hands* Let's get this party started!",
    "Write a two-line poem about Monday mornings.",
    "How can I stay focused while working from home?",
    "Describe the water cycle in simple words.",
    "What is the difference between weather and climate?",
    "Plan a one-day visit to a museum with two children.",
]

PASSAGES = [  # (passage, question, gold answers)
    ("The village of Marlow Creek built its first stone bridge in 1873. Before that, farmers crossed the river on a "
     "wooden ferry run by the Hask family.", "In what year was the stone bridge built?", ["1873"]),
    ("Tovia is a small island nation whose main export is vanilla. Most of its 40,000 people live in the capital, "
     "Port Elm, on the northern coast.", "What is the capital of Tovia?", ["Port Elm"]),
    ("The Orrin telescope has a mirror 4.2 metres wide. It was designed by the engineer Dana Whitlock and first "
     "pointed at the sky in 2009.", "Who designed the Orrin telescope?", ["Dana Whitlock", "Whitlock"]),
    ("Greenleaf Library opens at nine in the morning on weekdays and at noon on Sundays. It is closed on "
     "Saturdays for cleaning.", "On which day is Greenleaf Library closed?", ["Saturday", "Saturdays"]),
    ("The red-tailed marsh frog lays its eggs on floating leaves. A single female can lay up to 300 eggs in one "
     "season.", "How many eggs can a female lay in one season?", ["300"]),
    ("Kelby Motors moved its factory from Aldwick to the town of Brenford in 1998, because Brenford had a "
     "railway line.", "To which town did Kelby Motors move its factory?", ["Brenford"]),
    ("The Sorrel Festival is held every autumn in the city of Luma. Its best-known event is a race in which "
     "teams carry a giant wooden pear.", "What do the teams carry in the race?", ["pear", "wooden pear"]),
    ("Chef Amara Osei opened her first restaurant, Blue Pepper, in 2015. It serves dishes from Ghana and Brazil.",
     "What is the name of Amara Osei's first restaurant?", ["Blue Pepper"]),
    ("The Halden glacier has lost about 60 metres of ice since 1950. Scientists measure it every July with "
     "drones.", "In which month is the glacier measured?", ["July"]),
    ("Pinecroft School has 420 pupils and 31 teachers. Its football team is called the Foxes.",
     "What is the school's football team called?", ["Foxes", "the Foxes"]),
]


def passage_prompt(passage: str, question: str) -> str:
    return f"Answer the question from the passage.\n\nPassage: {passage}\n\nQuestion: {question}"

REPLAY = [  # replay prompts: the base's own answers to these keep an SFT adapter answering (recipe `replay`);
    # never scored by the gate (OPEN, GENERAL and PASSAGES are), so the gate does not grade what was trained on
    "How do I boil an egg?",
    "What is photosynthesis?",
    "Give me two ideas for a rainy afternoon.",
    "How does a bicycle stay upright?",
    "What is a good way to start learning to code?",
    "Write a thank-you note to a neighbour who watered my plants.",
    "Why is the sea salty?",
    "How can I save money on groceries?",
    "What causes thunder?",
    "Suggest a healthy breakfast.",
    "What is the difference between a virus and a bacterium?",
    "How do I remove a coffee stain from a shirt?",
    "Explain what inflation is.",
    "What are some good habits for studying?",
    "How do airplanes fly?",
    "Recommend a board game for four friends and say why.",
    "What should I do if my phone battery drains fast?",
    "How do vaccines work?",
    "Write a two-line poem about autumn.",
    "How do I prepare for a job interview?",
    "What is the tallest mountain in the world?",
    "Why do leaves change colour in autumn?",
    "How can I make my small flat feel bigger?",
    "What is a black hole?",
]

REPLAY_PASSAGES = [  # replay reading rows (passage, question, gold): kept only where the base's answer holds the gold,
    # so the SFT adapter keeps reading passages (recipe `replay`); never scored by the gate (PASSAGES is)
    ("The Quillon Dam was finished in 1962 and holds back the Vessa River. Its lake, Lake Arden, supplies water to "
     "three towns.", "What is the name of the dam's lake?", ["Lake Arden"]),
    ("Mira Castell wrote the novel The Salt Orchard while working as a night nurse. It won the Hollis Prize in "
     "2011.", "Which prize did The Salt Orchard win?", ["Hollis Prize", "Hollis"]),
    ("The town of Brackwell holds a cheese market every Thursday morning in its old square. The market has run "
     "since 1820.", "On which day is the cheese market held?", ["Thursday"]),
    ("Captain Ilse Varga sailed the research ship Northern Wren to the Kerrin Islands to count seabirds. The trip "
     "took 48 days.", "What was the name of the research ship?", ["Northern Wren"]),
    ("The Lumen Tower in Castora is 212 metres tall. It was built by the Delmar Company and opened to visitors in "
     "1999.", "How tall is the Lumen Tower?", ["212"]),
    ("Ferro is a dog breed from the hills of Valmont. Ferro dogs have grey coats and were bred to guard sheep from "
     "wolves.", "What were Ferro dogs bred to do?", ["guard sheep", "guard"]),
    ("The Pell Street Bakery sells about 900 loaves a day. Its owner, Tomas Reyes, bakes the first batch at four in "
     "the morning.", "Who owns the Pell Street Bakery?", ["Tomas Reyes", "Reyes"]),
    ("Astronomers at the Keldan Observatory found the comet Harrow-3 in March 2016. It passes the Sun every 71 "
     "years.", "How often does the comet pass the Sun?", ["71", "every 71 years"]),
]
