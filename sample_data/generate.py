"""Regenerate the bundled sample data (deterministic): ``python sample_data/generate.py``.

The task is small on purpose: read a short product/place review and answer with its sentiment and
topic. A tiny model can learn it in a minute on a CPU, the answer is checkable by exact match, and
held-out rows are new combinations of known words, so a gain on them means the model learned the
rule rather than memorised rows.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

TOPICS = {
    "restaurant": ["soup", "pasta", "pizza", "dessert", "coffee", "waiter", "menu", "salad", "bread", "kitchen"],
    "hotel": ["room", "bed", "pool", "breakfast", "lobby", "view", "shower", "receptionist", "balcony", "towels"],
    "movie": ["plot", "actors", "ending", "soundtrack", "script", "director", "story", "dialogue", "villain", "camera work"],
    "phone": ["battery", "screen", "camera", "charger", "speaker", "keyboard", "case", "microphone", "display", "software"],
}
POSITIVE = ["delicious", "excellent", "wonderful", "friendly", "great", "lovely", "fantastic", "clean",
            "fast", "perfect", "superb", "charming", "bright", "smooth"]
NEGATIVE = ["awful", "terrible", "cold", "rude", "dirty", "slow", "boring", "broken", "noisy", "bland",
            "disappointing", "weak", "dull", "cheap"]
OPENERS = ["", "We went there last week. ", "I tried it on Friday. ", "My sister recommended it. ",
           "I bought it for my trip. ", "We stayed for two nights. ", "I watched it with friends. "]
CLOSERS = {
    "positive": ["", " I would come back.", " Highly recommended.", " We loved it.", " Worth every penny."],
    "negative": ["", " I will not return.", " Avoid it.", " What a waste.", " Never again."],
}
INSTRUCTIONS = [
    "Classify the sentiment and topic of this review.",
    "What are the sentiment and the topic of the following review?",
    "Read the review and give its sentiment and topic.",
]
SYSTEM = "You are a careful assistant that labels customer reviews."


def review(rng: random.Random) -> tuple[str, str, str]:
    topic = rng.choice(list(TOPICS))
    sentiment = rng.choice(["positive", "negative"])
    adjectives = POSITIVE if sentiment == "positive" else NEGATIVE
    nouns = rng.sample(TOPICS[topic], k=rng.choice([1, 2, 2, 3]))
    clauses = [f"the {n} was {rng.choice(adjectives)}" for n in nouns]
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    text = rng.choice(OPENERS) + body[0].upper() + body[1:] + "." + rng.choice(CLOSERS[sentiment])
    return text, sentiment, topic


def answer(sentiment: str, topic: str) -> str:
    return f"Sentiment: {sentiment}. Topic: {topic}."


def write_jsonl(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(1234)
    alpaca = []
    for _ in range(2000):
        text, sentiment, topic = review(rng)
        alpaca.append({"instruction": rng.choice(INSTRUCTIONS), "input": text, "output": answer(sentiment, topic)})
    write_jsonl("reviews_alpaca.jsonl", alpaca)

    chats = []
    for i in range(800):
        text, sentiment, topic = review(rng)
        messages = [{"role": "system", "content": SYSTEM}] if i % 2 == 0 else []
        if i % 4 == 3:  # two turns: sentiment first, then the topic as a follow-up
            messages += [
                {"role": "user", "content": f"Review: {text}\nIs this review positive or negative?"},
                {"role": "assistant", "content": f"Sentiment: {sentiment}."},
                {"role": "user", "content": "And what is it about?"},
                {"role": "assistant", "content": f"Topic: {topic}."},
            ]
        else:
            messages += [
                {"role": "user", "content": f"Review: {text}\n{rng.choice(INSTRUCTIONS)}"},
                {"role": "assistant", "content": answer(sentiment, topic)},
            ]
        chats.append({"messages": messages})
    write_jsonl("reviews_chat.jsonl", chats)

    sharegpt = []
    for _ in range(200):
        text, sentiment, topic = review(rng)
        sharegpt.append({"conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": f"Review: {text}\n{rng.choice(INSTRUCTIONS)}"},
            {"from": "gpt", "value": answer(sentiment, topic)},
        ]})
    write_jsonl("reviews_sharegpt.jsonl", sharegpt)

    completion = []
    for _ in range(200):
        text, sentiment, topic = review(rng)
        completion.append({"prompt": f"Review: {text}\nLabel:", "completion": " " + answer(sentiment, topic)})
    write_jsonl("reviews_prompt_completion.jsonl", completion)

    with open(HERE / "reviews_qa.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "answer"])
        for _ in range(200):
            text, sentiment, topic = review(rng)
            writer.writerow([f"{rng.choice(INSTRUCTIONS)}\n{text}", answer(sentiment, topic)])

    # Plain prose in the task's vocabulary: the 'text' format sample, and the demo model's pre-training
    # corpus (it learns the words and that adjectives carry sentiment, not the instruction format).
    text_rows = []
    for _ in range(1500):
        text, sentiment, topic = review(rng)
        text_rows.append({"text": f"{text} This {topic} review is {sentiment}."})
    write_jsonl("reviews_text.jsonl", text_rows)


if __name__ == "__main__":
    main()
