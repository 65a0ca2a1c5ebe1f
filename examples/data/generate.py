#!/usr/bin/env python3
"""Generates the example datasets (synthetic, seeded, no external data or licence involved).

* intents/     customer-support messages labelled billing, shipping, technical or account, for
               prompt tuning with a verbalizer (the label word is the output).
* e2e/         restaurant meaning representations in the style of the E2E NLG challenge
               (name[...], eatType[...], ...) paired with one sentence realising them, for
               prefix tuning (data-to-text).

Usage: python examples/data/generate.py   (writes next to this file; Python 3 standard library)
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

INTENTS = {
    "billing": [
        "I was charged twice for my {thing} this month",
        "Why is there an extra fee of {amount} on my invoice?",
        "Can I get a refund for the {thing} I cancelled?",
        "My credit card was billed {amount} but I never ordered that",
        "How do I change the payment method for my {thing}?",
        "The invoice for {month} shows the wrong amount",
        "Please explain the charge of {amount} from last {weekday}",
        "I want to dispute a payment of {amount}",
    ],
    "shipping": [
        "My {thing} still hasn't arrived after two weeks",
        "Where is my package? The tracking page has not changed since {weekday}",
        "The courier left my {thing} at the wrong address",
        "Can you ship my order to {city} instead?",
        "The box arrived damaged and the {thing} inside is broken",
        "How long does delivery to {city} usually take?",
        "I need my {thing} delivered before {weekday}, is express shipping possible?",
        "The delivery was marked as completed but nothing came",
    ],
    "technical": [
        "The app crashes every time I open the {screen} screen",
        "I get error code {code} when I try to sync my {thing}",
        "My {thing} will not connect to the wifi since the last update",
        "The website shows a blank page on the {screen} page",
        "Notifications stopped working on my phone after {weekday}",
        "The {thing} freezes and restarts by itself",
        "Uploading files fails with error {code}",
        "The {screen} button does nothing when I click it",
    ],
    "account": [
        "I forgot my password and the reset email never comes",
        "How do I change the email address on my account?",
        "Please delete my account and all my data",
        "Someone logged into my account from {city}, I did not do that",
        "I cannot update my username, it says it is taken",
        "Can I merge my two accounts into one?",
        "How do I turn on two-factor authentication?",
        "My account was locked after too many login attempts on {weekday}",
    ],
}
FILL = {
    "thing": ["subscription", "headphones", "laptop", "order", "tablet", "membership", "camera", "router", "printer", "watch"],
    "amount": ["$12.99", "$45", "$7.50", "$120", "$3.20", "$89.99"],
    "month": ["January", "March", "May", "August", "October", "December"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
    "city": ["Lyon", "Toronto", "Osaka", "Denver", "Leeds", "Porto", "Austin"],
    "screen": ["settings", "checkout", "profile", "search", "login", "history"],
    "code": ["E102", "503", "0x80070005", "ERR_TIMEOUT", "E-47", "401"],
}
OPENERS = ["", "Hi, ", "Hello, ", "Hey there. ", "Good morning, ", "Excuse me, "]
CLOSERS = ["", " Thanks.", " Please help.", " Any idea?", " This is urgent.", " Thank you!"]


def fill(rng, template):
    out = template
    for key, values in FILL.items():
        while "{" + key + "}" in out:
            out = out.replace("{" + key + "}", rng.choice(values), 1)
    return out


def intents(rng, n):
    rows = []
    labels = sorted(INTENTS)
    for i in range(n):
        label = labels[i % len(labels)]
        body = fill(rng, rng.choice(INTENTS[label]))
        if body[-1] not in ".?!":
            body += "."
        text = rng.choice(OPENERS) + body + rng.choice(CLOSERS)
        rows.append({"input": f"Message: {text}\nCategory:", "output": f" {label}"})
    rng.shuffle(rows)
    return rows


NAMES = ["The Eagle", "Blue Spice", "The Mill", "Green Man", "Aromi", "The Punter", "Cotto", "Fitzbillies",
         "The Vaults", "Zizzi", "Loch Fyne", "The Cricketers", "Alimentum", "Clowns", "Strada", "Wildwood"]
FOODS = ["French", "Italian", "Chinese", "Indian", "Japanese", "English", "fast food"]
PRICES = ["cheap", "moderate", "high", "less than £20", "more than £30"]
AREAS = ["city centre", "riverside"]
NEAR = ["Burger King", "the Sorrento", "Café Rouge", "Raja Indian Cuisine", "The Bakers", "Yippee Noodle Bar"]
RATINGS = ["low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"]
TYPES = ["restaurant", "coffee shop", "pub"]


def article(word):
    return "an" if word[0].lower() in "aeiou" else "a"


def price_phrase(p):
    return {"cheap": "cheap", "moderate": "moderately priced", "high": "expensive",
            "less than £20": "low-priced", "more than £30": "high-priced"}[p]


def e2e(rng, n):
    rows = []
    for _ in range(n):
        mr = {"name": rng.choice(NAMES), "eatType": rng.choice(TYPES), "food": rng.choice(FOODS)}
        for key, values, p in [("priceRange", PRICES, 0.7), ("customer rating", RATINGS, 0.5),
                               ("area", AREAS, 0.8), ("familyFriendly", ["yes", "no"], 0.6), ("near", NEAR, 0.5)]:
            if rng.random() < p:
                mr[key] = rng.choice(values)
        parts = [mr["name"], "is"]
        described = ([price_phrase(mr["priceRange"])] if "priceRange" in mr else []) + [f"{mr['food']} {mr['eatType']}"]
        parts.append(article(described[0]))
        parts.extend(described)
        if "area" in mr:
            parts.append(f"in the {mr['area']}")
        if "near" in mr:
            parts.append(f"near {mr['near']}")
        sentence = " ".join(parts) + "."
        extra = []
        if "customer rating" in mr:
            extra.append(f"It has {article(mr['customer rating'])} {mr['customer rating']} customer rating")
        if "familyFriendly" in mr:
            extra.append("It is family friendly" if mr["familyFriendly"] == "yes" else "It is not family friendly")
        if extra:
            sentence += " " + " and ".join([extra[0]] + [e[0].lower() + e[1:] for e in extra[1:]]) + "."
        meaning = ", ".join(f"{k}[{v}]" for k, v in mr.items())
        rows.append({"input": f"Meaning representation: {meaning}\nDescription:", "output": f" {sentence}"})
    return rows


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(2024)
    write(f"{HERE}/intents/train.jsonl", intents(rng, 400))
    write(f"{HERE}/intents/test.jsonl", intents(rng, 120))
    write(f"{HERE}/e2e/train.jsonl", e2e(rng, 800))
    write(f"{HERE}/e2e/test.jsonl", e2e(rng, 60))
    print("wrote examples/data/{intents,e2e}/{train,test}.jsonl")


if __name__ == "__main__":
    main()
