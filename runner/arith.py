"""The built-in default dataset: synthetic multilingual arithmetic word problems with exact answers.

Eleven languages (MGSM's set: bn, de, en, es, fr, ja, ru, sw, te, th, zh), three problem types (addition, subtraction,
multiplication), names and numbers drawn from a seeded ``random.Random`` per (seed, split, language), so the same
seed gives the same rows on every machine. Train and test rows never share a (type, a, b) triple. The solution is a
one-line equation followed by the language's "The answer is N" phrase, so answers are extracted as on MGSM.

The templates were written for this project (they are not translations of any dataset's rows).
"""

from __future__ import annotations

import random

from runner.data import Example

# lang -> (names, {op: question template}, answer phrase)
TEMPLATES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "en": (["Anna", "Ben", "Maria", "Tom"], {
        "add": "{n1} has {a} apples. {n2} gives {n1} {b} more apples. How many apples does {n1} have now?",
        "sub": "{n1} has {a} apples. {n1} gives {b} apples to {n2}. How many apples does {n1} have left?",
        "mul": "{n1} buys {a} bags with {b} apples in each bag. How many apples does {n1} buy?",
    }, "The answer is {c}."),
    "de": (["Lena", "Jonas", "Mia", "Paul"], {
        "add": "{n1} hat {a} Äpfel. {n2} gibt {n1} noch {b} Äpfel. Wie viele Äpfel hat {n1} jetzt?",
        "sub": "{n1} hat {a} Äpfel. {n1} gibt {n2} {b} Äpfel. Wie viele Äpfel hat {n1} noch?",
        "mul": "{n1} kauft {a} Tüten mit je {b} Äpfeln. Wie viele Äpfel kauft {n1}?",
    }, "Die Antwort lautet {c}."),
    "fr": (["Camille", "Louis", "Chloé", "Hugo"], {
        "add": "{n1} a {a} pommes. {n2} donne encore {b} pommes à {n1}. Combien de pommes a {n1} maintenant ?",
        "sub": "{n1} a {a} pommes. {n1} donne {b} pommes à {n2}. Combien de pommes reste-t-il à {n1} ?",
        "mul": "{n1} achète {a} sacs de {b} pommes chacun. Combien de pommes achète {n1} ?",
    }, "La réponse est {c}."),
    "es": (["Lucía", "Mateo", "Sofía", "Diego"], {
        "add": "{n1} tiene {a} manzanas. {n2} le da {b} manzanas más. ¿Cuántas manzanas tiene {n1} ahora?",
        "sub": "{n1} tiene {a} manzanas. {n1} le da {b} manzanas a {n2}. ¿Cuántas manzanas le quedan a {n1}?",
        "mul": "{n1} compra {a} bolsas con {b} manzanas cada una. ¿Cuántas manzanas compra {n1}?",
    }, "La respuesta es {c}."),
    "ru": (["Анна", "Иван", "Мария", "Олег"], {
        "add": "В корзине {a} яблок. {n2} кладёт в корзину ещё {b} яблок. Сколько яблок в корзине теперь?",
        "sub": "В корзине {a} яблок. {n2} берёт из корзины {b} яблок. Сколько яблок осталось в корзине?",
        "mul": "{n1} покупает {a} пакетов, в каждом по {b} яблок. Сколько всего яблок покупает {n1}?",
    }, "Ответ: {c}."),
    "zh": (["小明", "小红", "小华", "小丽"], {
        "add": "{n1}有{a}个苹果。{n2}又给了{n1}{b}个苹果。{n1}现在有多少个苹果？",
        "sub": "{n1}有{a}个苹果。{n1}给了{n2}{b}个苹果。{n1}还剩多少个苹果？",
        "mul": "{n1}买了{a}袋苹果，每袋有{b}个。{n1}一共买了多少个苹果？",
    }, "答案是 {c}。"),
    "ja": (["さくら", "たろう", "ゆき", "けんた"], {
        "add": "{n1}はりんごを{a}個持っています。{n2}が{n1}にりんごをさらに{b}個あげました。{n1}は今りんごを何個持っていますか？",
        "sub": "{n1}はりんごを{a}個持っています。{n1}は{n2}にりんごを{b}個あげました。{n1}のりんごは何個残っていますか？",
        "mul": "{n1}はりんごが{b}個ずつ入った袋を{a}袋買いました。{n1}はりんごを全部で何個買いましたか？",
    }, "答えは {c} です。"),
    "th": (["สมชาย", "สมศรี", "มานะ", "ปิติ"], {
        "add": "{n1}มีแอปเปิล {a} ผล {n2}ให้แอปเปิล{n1}เพิ่มอีก {b} ผล ตอนนี้{n1}มีแอปเปิลกี่ผล",
        "sub": "{n1}มีแอปเปิล {a} ผล {n1}ให้แอปเปิล{n2}ไป {b} ผล {n1}เหลือแอปเปิลกี่ผล",
        "mul": "{n1}ซื้อแอปเปิล {a} ถุง ถุงละ {b} ผล {n1}ซื้อแอปเปิลทั้งหมดกี่ผล",
    }, "คำตอบคือ {c}"),
    "sw": (["Amani", "Baraka", "Neema", "Juma"], {
        "add": "{n1} ana machungwa {a}. {n2} anampa {n1} machungwa {b} zaidi. {n1} ana machungwa mangapi sasa?",
        "sub": "{n1} ana machungwa {a}. {n1} anampa {n2} machungwa {b}. {n1} amebaki na machungwa mangapi?",
        "mul": "{n1} ananunua mifuko {a}, kila mfuko una machungwa {b}. {n1} ananunua machungwa mangapi kwa jumla?",
    }, "Jibu ni {c}."),
    "bn": (["রাহুল", "মিতা", "অমিত", "সীমা"], {
        "add": "{n1}-এর কাছে {a}টি আপেল আছে। {n2} {n1}-কে আরও {b}টি আপেল দিল। এখন {n1}-এর কাছে কতগুলি আপেল আছে?",
        "sub": "{n1}-এর কাছে {a}টি আপেল আছে। {n1} {n2}-কে {b}টি আপেল দিল। {n1}-এর কাছে আর কতগুলি আপেল রইল?",
        "mul": "{n1} {a}টি ব্যাগ কিনল, প্রতিটি ব্যাগে {b}টি আপেল আছে। {n1} মোট কতগুলি আপেল কিনল?",
    }, "উত্তর হল {c}।"),
    "te": (["రాము", "సీత", "కృష్ణ", "లక్ష్మి"], {
        "add": "{n1} దగ్గర {a} ఆపిల్స్ ఉన్నాయి. {n2} {n1}కి మరో {b} ఆపిల్స్ ఇచ్చారు. ఇప్పుడు {n1} దగ్గర ఎన్ని ఆపిల్స్ ఉన్నాయి?",
        "sub": "{n1} దగ్గర {a} ఆపిల్స్ ఉన్నాయి. {n1} {n2}కి {b} ఆపిల్స్ ఇచ్చారు. {n1} దగ్గర ఎన్ని ఆపిల్స్ మిగిలాయి?",
        "mul": "{n1} {a} సంచులు కొన్నారు, ఒక్కో సంచిలో {b} ఆపిల్స్ ఉన్నాయి. {n1} మొత్తం ఎన్ని ఆపిల్స్ కొన్నారు?",
    }, "సమాధానం {c}."),
}
LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
OPS = {"add": ("+", lambda a, b: a + b), "sub": ("-", lambda a, b: a - b), "mul": ("*", lambda a, b: a * b)}


def _draw(rng: random.Random) -> tuple[str, int, int]:
    op = rng.choice(sorted(OPS))
    if op == "add":
        return op, rng.randint(2, 50), rng.randint(2, 50)
    if op == "sub":
        a = rng.randint(10, 60)
        return op, a, rng.randint(1, a - 1)
    return op, rng.randint(2, 9), rng.randint(2, 12)


def _problems(lang: str, n: int, seed: int, tag: str, exclude: set[tuple[str, int, int]]) -> list[Example]:
    names, templates, phrase = TEMPLATES[lang]
    rng = random.Random(f"arith-{seed}-{tag}-{lang}")
    out, seen = [], set(exclude)
    while len(out) < n:
        op, a, b = _draw(rng)
        if (op, a, b) in seen:
            continue
        seen.add((op, a, b))
        n1, n2 = rng.sample(names, 2)
        sign, fn = OPS[op]
        c = fn(a, b)
        question = templates[op].format(n1=n1, n2=n2, a=a, b=b)
        solution = f"{a} {sign} {b} = {c}. " + phrase.format(c=c)
        out.append(Example(f"arith-{lang}-{tag}-{len(out)}", question, solution, str(c), lang,
                           {"op": op, "a": a, "b": b}))
    return out


def generate(split: str, languages: list[str], train_size: int = 256, eval_size: int = 16,
             seed: int = 0) -> list[Example]:
    """Generate the ``train`` or ``test`` split for ``languages``.

    Args:
        split: ``train`` or ``test``.
        languages: codes from :data:`LANGUAGES`.
        train_size: rows per language in ``train``.
        eval_size: rows per language in ``test``.
        seed: the dataset seed; the same seed gives the same rows.

    Returns:
        Rows in language order. Test rows are drawn first and excluded from train, so the splits are disjoint.
    """
    out = []
    for lang in languages:
        test = _problems(lang, eval_size, seed, "test", set())
        if split == "test":
            out.extend(test)
        else:
            held = {(e.meta["op"], e.meta["a"], e.meta["b"]) for e in test}
            out.extend(_problems(lang, train_size, seed, "train", held))
    return out


def tokenizer_corpus() -> list[str]:
    """Deterministic text the built-in tokenizer is trained on: every template and phrase in every language, plus
    digits and operators, so any script of the built-in data gets multi-byte merges (others fall back to bytes)."""
    lines = []
    for lang in LANGUAGES:
        lines.extend(ex.question + " " + ex.solution for ex in generate("train", [lang], train_size=64, seed=0))
    lines.append(" ".join(str(i) for i in range(1000)))
    lines.append("Question: Answer: The answer is + - * / = ( ) . , ? ! : ; \\boxed{} #### <think> </think>")
    return lines
