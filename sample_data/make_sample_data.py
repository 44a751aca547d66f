#!/usr/bin/env python3
"""Writes embedpipe's sample data: articles.parquet, articles.csv and images/.

Deterministic (fixed seed). Needs pyarrow and pillow:
    python3 -m pip install pyarrow pillow && python3 sample_data/make_sample_data.py
"""
import csv
import datetime
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20261125)

TOPICS = {
    "astronomy": {
        "subjects": ["The James Webb telescope", "A new exoplanet survey", "Amateur astronomers", "The Andromeda galaxy",
                     "A distant quasar", "Saturn's rings", "A total solar eclipse", "The Perseid meteor shower",
                     "A neutron star merger", "The Hubble constant"],
        "verbs": ["reveals", "challenges", "sheds light on", "measures", "captures"],
        "objects": ["the early universe", "dark matter halos", "the birth of stars", "planetary atmospheres",
                    "black hole jets", "cosmic expansion", "stellar nurseries", "galaxy clusters"],
        "details": ["Spectra taken in the infrared show water vapour and carbon dioxide.",
                    "Observers recommend a dark site away from city lights and a wide-field eyepiece.",
                    "The orbit takes 12 Earth days, placing the planet inside its star's habitable zone.",
                    "Redshift measurements suggest the light left its source 13 billion years ago.",
                    "Gravitational lensing magnifies the faint background galaxies behind the cluster.",
                    "The telescope's mirror segments were aligned to within a fraction of a wavelength."],
    },
    "cooking": {
        "subjects": ["A slow-braised beef stew", "Homemade sourdough bread", "A quick weeknight pasta",
                     "Crispy roast potatoes", "A classic French omelette", "Thai green curry", "Lemon drizzle cake",
                     "Fresh tomato salsa", "A creamy mushroom risotto", "Pan-seared salmon"],
        "verbs": ["needs", "benefits from", "depends on", "is transformed by", "starts with"],
        "objects": ["a hot cast-iron pan", "fresh herbs and garlic", "a long, gentle simmer", "good olive oil",
                    "properly salted water", "a well-fed starter", "browned butter", "toasted spices"],
        "details": ["Season generously and taste the sauce before serving.",
                    "Let the dough rest overnight in the fridge for a deeper flavour.",
                    "Deglaze the pan with white wine and scrape up the browned bits.",
                    "Stir in the parmesan off the heat so the rice stays creamy.",
                    "Preheat the oven to 220 degrees and roast until golden and crunchy.",
                    "Serve with a squeeze of lime, chopped coriander and steamed jasmine rice."],
    },
    "football": {
        "subjects": ["The home side's striker", "A late penalty", "The league leaders", "A young goalkeeper",
                     "The national team coach", "A dramatic cup final", "The transfer window", "An own goal",
                     "The midfield captain", "A derby match"],
        "verbs": ["decides", "overshadows", "sparks debate about", "highlights", "turns around"],
        "objects": ["the title race", "the relegation battle", "the club's pressing tactics", "the offside rule",
                    "the Champions League campaign", "a season of injuries", "video assistant referee decisions",
                    "the academy's youth players"],
        "details": ["The winger crossed from the left and the header went in off the crossbar.",
                    "Supporters sang for ninety minutes despite the heavy rain at the stadium.",
                    "The referee showed two yellow cards in stoppage time.",
                    "A 4-3-3 formation left gaps behind the full-backs on the counter-attack.",
                    "The penalty shootout ended 5-4 after the keeper saved the final kick.",
                    "The manager praised his defenders for a third consecutive clean sheet."],
    },
    "programming": {
        "subjects": ["The Rust borrow checker", "A memory leak in production", "Async runtimes",
                     "A slow SQL query", "Unit tests", "The new compiler release", "Code review",
                     "A race condition", "Dependency upgrades", "The garbage collector"],
        "verbs": ["prevents", "exposes", "simplifies", "complicates", "speeds up"],
        "objects": ["concurrent data access", "the deployment pipeline", "API error handling", "database indexing",
                    "the build times", "refactoring legacy code", "thread synchronisation", "heap allocations"],
        "details": ["Profiling with a flame graph pointed at a hot loop allocating strings.",
                    "Adding a composite index reduced the query from two seconds to four milliseconds.",
                    "The fix wraps the shared counter in a mutex and adds a regression test.",
                    "Compile the project in release mode before measuring any benchmark.",
                    "The function now returns a Result instead of panicking on invalid input.",
                    "Continuous integration runs clippy and the full test suite on every pull request."],
    },
    "gardening": {
        "subjects": ["Tomato seedlings", "A rose bush", "The vegetable patch", "Spring bulbs", "A compost heap",
                     "Climbing beans", "The lawn", "Potted herbs", "Fruit trees", "A wildflower meadow"],
        "verbs": ["thrives with", "suffers from", "needs protection from", "is improved by", "responds well to"],
        "objects": ["regular watering", "late frosts", "aphids and slugs", "well-rotted manure", "hard pruning",
                    "a sunny south-facing bed", "mulching in autumn", "good drainage"],
        "details": ["Sow the seeds a centimetre deep and keep the soil moist until they germinate.",
                    "Prune back to an outward-facing bud in late winter.",
                    "Turn the compost every few weeks to keep it aerated.",
                    "Plant the bulbs pointy end up at three times their own depth.",
                    "Pinch out the side shoots so the plant puts its energy into the fruit.",
                    "A layer of bark mulch keeps weeds down and holds moisture in the soil."],
    },
    "medicine": {
        "subjects": ["A new vaccine trial", "Blood pressure medication", "Regular exercise", "The flu season",
                     "Antibiotic resistance", "A clinical study on sleep", "Type 2 diabetes", "Childhood asthma",
                     "Heart surgery outcomes", "Vitamin D levels"],
        "verbs": ["reduces the risk of", "is linked to", "improves", "raises concerns about", "changes guidance on"],
        "objects": ["hospital admissions", "cardiovascular disease", "immune responses", "patient recovery times",
                    "chronic inflammation", "insulin sensitivity", "respiratory infections", "long-term survival"],
        "details": ["The randomised controlled trial enrolled 4,000 patients across twelve hospitals.",
                    "Doctors advise completing the full course of antibiotics as prescribed.",
                    "Symptoms include fever, cough, fatigue and shortness of breath.",
                    "The placebo group showed no significant change in blood glucose.",
                    "Nurses monitored heart rate and oxygen saturation every hour after surgery.",
                    "Researchers caution that the study was observational and cannot prove causation."],
    },
    "finance": {
        "subjects": ["Central bank interest rates", "The stock market", "Household savings", "Corporate bonds",
                     "Inflation figures", "A pension fund", "Mortgage lenders", "Quarterly earnings",
                     "The currency exchange rate", "Index funds"],
        "verbs": ["weigh on", "boost", "reshape", "signal a slowdown in", "put pressure on"],
        "objects": ["consumer spending", "bond yields", "retirement portfolios", "housing affordability",
                    "company valuations", "the labour market", "small business lending", "investor confidence"],
        "details": ["Analysts expect the bank to raise rates by a quarter of a percentage point.",
                    "Diversifying across asset classes lowers the volatility of a portfolio.",
                    "Revenue rose eight percent year on year while operating margins narrowed.",
                    "The yield curve inverted, which has often preceded a recession.",
                    "Fixed-rate mortgages protect borrowers from rising monthly repayments.",
                    "Low-cost index funds track the market and charge minimal management fees."],
    },
    "music": {
        "subjects": ["The symphony orchestra", "A jazz quartet", "The new album", "A guitar solo",
                     "The festival headliner", "A string quartet", "Electronic producers", "The opera revival",
                     "A piano concerto", "The choir"],
        "verbs": ["celebrates", "reinvents", "pays tribute to", "experiments with", "returns to"],
        "objects": ["classic blues chord progressions", "Baroque counterpoint", "syncopated rhythms",
                    "analogue synthesizers", "folk melodies", "minor-key harmonies", "live improvisation",
                    "the sound of the seventies"],
        "details": ["The drummer keeps a steady swing while the saxophone improvises over the changes.",
                    "The conductor took the final movement at a brisk tempo.",
                    "Layered vocal harmonies give the chorus a warm, rich sound.",
                    "The pianist played the cadenza from memory to a standing ovation.",
                    "The record was mixed on tape to keep a warm analogue feel.",
                    "The violins carry the main theme before the brass section answers."],
    },
}

AUTHORS = ["Ada Byrne", "Tomás Ruiz", "Mei Chen", "Olu Adeyemi", "Sara Lind", "Jonas Weber", "Priya Nair", "Liam Walsh"]


def article(topic, spec, n):
    s = spec["subjects"][n % len(spec["subjects"])]
    v = rng.choice(spec["verbs"])
    o = rng.choice(spec["objects"])
    title = f"{s} {v} {o}"
    details = rng.sample(spec["details"], 3)
    body = f"{s} {v} {o}. " + " ".join(details)
    return title, body


def main():
    rows = []
    start = datetime.date(2026, 1, 5)
    i = 0
    for topic, spec in TOPICS.items():
        for n in range(30):
            i += 1
            title, body = article(topic, spec, n)
            rows.append({
                "id": f"art-{i:04d}",
                "title": title,
                "body": body,
                "topic": topic,
                "author": rng.choice(AUTHORS),
                "published": (start + datetime.timedelta(days=rng.randrange(0, 300))).isoformat(),
                "url": f"https://news.example.com/{topic}/{i:04d}",
                "word_count": len(body.split()),
            })
    rng.shuffle(rows)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("id", pa.string()), ("title", pa.string()), ("body", pa.string()), ("topic", pa.string()),
        ("author", pa.string()), ("published", pa.string()), ("url", pa.string()), ("word_count", pa.int64()),
    ]))
    pq.write_table(table, os.path.join(HERE, "articles.parquet"), row_group_size=64, compression="zstd")
    with open(os.path.join(HERE, "articles.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)

    # Images: simple scenes in four formats, in two subfolders.
    img_dir = os.path.join(HERE, "images")
    scenes = [
        ("sky", (70, 130, 230), "sun"), ("sea", (20, 90, 160), "boat"), ("forest", (30, 120, 50), "tree"),
        ("desert", (230, 200, 120), "cactus"), ("night", (15, 15, 50), "moon"), ("snow", (240, 240, 250), "snowman"),
        ("sunset", (250, 120, 60), "sun"), ("field", (120, 190, 70), "flower"),
    ]
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("gif", "GIF"), ("webp", "WEBP")]
    k = 0
    for name, colour, thing in scenes:
        for fmt_i in range(3):
            ext, fmt = formats[(k + fmt_i) % len(formats)]
            sub = "landscapes" if name in ("sky", "sea", "forest", "desert") else "scenes"
            os.makedirs(os.path.join(img_dir, sub), exist_ok=True)
            w, h = 96 + 16 * fmt_i, 64 + 8 * fmt_i
            img = Image.new("RGB", (w, h), colour)
            d = ImageDraw.Draw(img)
            x = 10 + 20 * fmt_i
            if thing in ("sun", "moon"):
                d.ellipse([x, 8, x + 24, 32], fill=(255, 230, 80) if thing == "sun" else (230, 230, 230))
            elif thing == "tree":
                d.rectangle([x + 10, 30, x + 16, h - 4], fill=(100, 60, 20))
                d.ellipse([x, 6, x + 26, 36], fill=(20, 90, 30))
            else:
                d.polygon([(x, h - 6), (x + 30, h - 6), (x + 15, h - 36)], fill=(200, 40, 40))
            img.save(os.path.join(img_dir, sub, f"{name}-{fmt_i + 1}.{ext}"), fmt)
            k += 1
    print(f"wrote {len(rows)} articles and {k} images")


if __name__ == "__main__":
    main()
