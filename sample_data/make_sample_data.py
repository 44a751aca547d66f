#!/usr/bin/env python3
"""Writes embedpipe's sample data: articles.parquet, articles.csv, images/ and docs/specifications.pdf.

Deterministic (fixed seed). `articles` needs pyarrow and `images` needs pillow; `docs` is pure
Python. Without arguments every target is written:
    python3 -m pip install pyarrow pillow && python3 sample_data/make_sample_data.py
    python3 sample_data/make_sample_data.py docs      # only docs/specifications.pdf
    python3 sample_data/make_sample_data.py articles images

The other files in docs/ (Markdown, HTML, text) are written by hand and only read here.
"""
import csv
import datetime
import os
import random
import sys
import textwrap

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


def make_articles():
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    print(f"wrote {len(rows)} articles")


def make_images():
    from PIL import Image, ImageDraw

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
    print(f"wrote {k} images")


# --- docs/specifications.pdf -----------------------------------------------------------------
# A small text PDF for the documents source, written byte by byte (no PDF library): PDF 1.4, one
# Helvetica (WinAnsiEncoding) font, one content stream per page, a classic xref table. Same bytes
# on every run: no dates, no random ids.

SPEC_TITLE = "Harbor Lantern HL-3 Technical Specifications"
SPEC_WIDTH = 90        # characters per line, Helvetica 11 pt, from x = 72 on a Letter page
SPEC_LINES = 45        # lines per page: 45 x 14 pt leading from y = 720 down to y = 104

# (heading, paragraphs). A paragraph starting with "- " is a bullet (continuation lines indented).
SPEC_SECTIONS = [
    ("HARBOR LANTERN HL-3 TECHNICAL SPECIFICATIONS", [
        "Document HL3-SPEC, revision 3.2. Applies to hardware revision HL-3 running the lanternd "
        "logger software, version 2.4. This sheet lists measurement ranges, tolerances and test "
        "conditions. Installation, calibration and maintenance procedures are in the Harbor "
        "Lantern Field Manual.",
    ]),
    ("1. Scope and test conditions", [
        "Unless stated otherwise, accuracy figures are given at 20 °C ± 2 °C ambient temperature, "
        "with a freshly calibrated probe, a clean radiation shield and a levelled rain gauge. "
        "Tolerances are expanded uncertainties with a coverage factor of k = 2 (about 95 % "
        "confidence). Reference instruments are calibrated each year against national standards "
        "by an accredited laboratory.",
        "Every HL-3 is tested individually before shipping. The results are printed on the "
        "calibration slip inside the logger box lid and are also stored in the archive as the "
        "first calibration record.",
    ]),
    ("2. Air temperature", [
        "- Measurement range: -40 °C to +60 °C.",
        "- Accuracy: ± 0.2 °C from 0 °C to +40 °C; ± 0.4 °C over the rest of the range.",
        "- Resolution: 0.01 °C. Reported values are rounded to 0.1 °C in CSV exports.",
        "- Response time (63 %, in the shield, air speed 1 m/s): 38 s.",
        "- Sampling: every 10 s; the archive keeps mean, minimum and maximum per interval.",
        "- Radiation error of the 12-plate shield: below 0.5 °C at 1000 W/m² and 1 m/s wind, "
        "below 0.2 °C when the wind is above 3 m/s.",
        "- Long-term drift: below 0.05 °C per year.",
    ]),
    ("3. Relative humidity", [
        "- Measurement range: 0 % to 100 % RH, non-condensing at the sensing element.",
        "- Accuracy: ± 2 % RH from 10 % to 90 % RH; ± 3.5 % RH below 10 % and above 90 % RH.",
        "- Resolution: 0.1 % RH.",
        "- Hysteresis: below 1 % RH.",
        "- Long-term drift: below 0.5 % RH per year in clean air; up to 1.5 % RH per year in salty "
        "or polluted air.",
        "- Derived values: dew point, heat index and wind chill are calculated, not measured.",
    ]),
    ("4. Barometric pressure", [
        "- Measurement range: 300 hPa to 1100 hPa.",
        "- Accuracy: ± 0.5 hPa at +25 °C; ± 1.0 hPa from -20 °C to +55 °C.",
        "- Resolution: 0.01 hPa.",
        "- Location: on the Keel logger board, vented through a waterproof membrane.",
        "- Sea-level pressure is reduced from station pressure using the entered altitude of the "
        "logger box and the 12-hour mean air temperature.",
    ]),
    ("5. Wind speed", [
        "- Sensor: three-cup anemometer, cup diameter 51 mm, rotor radius 72 mm.",
        "- Measurement range: 0.3 m/s to 75 m/s; starting threshold 0.3 m/s.",
        "- Accuracy: ± 0.3 m/s or ± 3 % of reading, whichever is greater, up to 50 m/s.",
        "- Distance constant: 2.4 m.",
        "- Sampling: pulses counted four times per second (4 Hz). Gust is the highest 3-second "
        "running mean in each archive interval.",
        "- Wind run is accumulated in kilometres and kept as a lifetime counter for maintenance.",
    ]),
    ("6. Wind direction", [
        "- Sensor: wind vane over a contactless magnetic angle sensor (no wiper, no dead band).",
        "- Measurement range: 0 to 359 degrees; resolution 1 degree.",
        "- Accuracy: ± 3 degrees after north alignment.",
        "- Damping ratio: 0.3; delay distance 1.1 m.",
        "- Averaging: vector mean over the archive interval; the standard deviation of direction "
        "is stored as well.",
    ]),
    ("7. Precipitation", [
        "- Sensor: tipping bucket with a 200 cm² collecting funnel and a stainless mesh filter.",
        "- Resolution: 0.2 mm per tip (4 mL of water).",
        "- Accuracy: ± 2 % up to 50 mm/h; ± 5 % from 50 mm/h to 200 mm/h.",
        "- Timing: each tip timestamped to 1 s; rain rate is calculated from the time between tips.",
        "- Heated funnel HL-HF1 (option): 6 W, thermostat on at +2 °C and off at +6 °C.",
        "- Field check: 400 mL of water poured over at least ten minutes gives 100 tips ± 2.",
    ]),
    ("8. Optional sensors", [
        "- HL-PYR pyranometer: global solar radiation, 0 to 1800 W/m², ± 5 % of daily total, "
        "spectral range 400 nm to 1100 nm.",
        "- HL-UV ultraviolet sensor: UV index 0 to 16, ± 10 % of reading.",
        "- HL-SOIL soil probe: temperature -20 °C to +50 °C, ± 0.3 °C; volumetric water content "
        "0 % to 50 %, ± 3 %; sensing depths 10 cm and 30 cm.",
    ]),
    ("9. Logger and timekeeping", [
        "- Processor: quad-core ARM Cortex-A53 at 1.2 GHz, 1 GB RAM.",
        "- Storage: 32 GB industrial-grade microSD card (pSLC), replaceable in the field.",
        "- Archive: one SQLite file; interval 1 to 60 minutes, default 5 minutes.",
        "- Clock: temperature-compensated real-time clock, drift below 2 s per week between 0 °C "
        "and +40 °C; supercapacitor backup for 10 days without power.",
        "- Time source: set from the setup page, from the LoRa relay, or by NTP when a network "
        "route exists.",
        "- Software: Lantern OS (based on Debian 12), lanternd 2.4, updates signed and installed "
        "from a USB stick with automatic fallback to the previous version.",
    ]),
    ("10. Power", [
        "- Solar panel: 20 W monocrystalline, 36 cells, open-circuit voltage 22.1 V.",
        "- Battery: LiFePO4, 12.8 V nominal, 12 Ah (153.6 Wh), in the logger box.",
        "- Consumption: 0.8 W average without radio; 1.1 W with LoRa sending every 5 minutes; "
        "0.9 W extra while the setup network is on.",
        "- Autonomy without sun: about 9 days at 1.1 W.",
        "- Charging: inhibited below 0 °C battery temperature, resumes at +2 °C.",
        "- Protection: the logger shuts down below 11.5 V and restarts above 12.2 V.",
        "- External supply: 12 V DC, at least 1.5 A, on the SOLAR port.",
    ]),
    ("11. Radio", [
        "- LoRa: 868 MHz (Europe) or 915 MHz (Americas and Oceania), set at the factory; "
        "transmit power up to 25 mW.",
        "- Range: typically 5 km with the whip antenna over open ground or water; 15 km with the "
        "HL-YG8 directional antenna on a clear line of sight.",
        "- Wi-Fi: 2.4 GHz, setup access point (switches off after 30 minutes without a client) "
        "and client mode.",
        "- Ethernet: 10/100 Mbit/s, DHCP.",
    ]),
    ("12. Enclosure and environmental ratings", [
        "- Logger box: IP66, UV-stabilised ASA, A4 stainless steel fasteners, vent membrane.",
        "- Operating temperature: logger -30 °C to +55 °C; masthead -40 °C to +60 °C.",
        "- Storage temperature: -40 °C to +70 °C (battery disconnected).",
        "- Salt spray: masthead and logger box pass 720 hours of neutral salt spray without "
        "loss of function.",
        "- Mass: masthead 2.3 kg; logger box with battery 3.9 kg; solar panel with bracket 2.1 kg.",
    ]),
    ("13. Mechanical ratings and mast loading", [
        "- Mast: three sections of 6063 aluminium tube, 40 mm outside diameter, 2 mm wall, 1 m "
        "each; anemometer height about 3.2 m above the foot of the mast.",
        "- Ground spike: 60 cm minimum embedment in firm soil; wall bracket fixed with four "
        "anchors rated at 1.5 kN each.",
        "- Guy kit HL-GK3: three 3 mm stainless wire ropes from the collar on the middle section, "
        "pegged at 120 degree intervals about 2 m from the foot of the mast, each tensioned to "
        "250 N.",
        "Survival wind speed. The complete station (mast, masthead, radiation shield, rain gauge, "
        "logger box and solar panel) withstands 3-second gusts of up to 62 m/s (223 km/h) when "
        "the HL-GK3 guy kit is fitted and tensioned as above. Without guys, the rated survival "
        "limit is 41 m/s (148 km/h). The solar panel bracket is the first part to yield in both "
        "cases, so inspect its tilt setting after any severe storm.",
    ]),
    ("14. Ordering codes", [
        "- HL-3: complete station (masthead, three-section mast, logger box with battery, 20 W "
        "solar panel, cables); radio band chosen at order.",
        "- HL-GK3: three-point guy kit with collar, wire ropes, tensioners and pegs.",
        "- HL-HF1: heated rain funnel, 6 W (needs the larger power kit).",
        "- HL-CW2: cold-weather kit, insulated battery jacket with a solar-powered heater.",
        "- HL-YG8: directional LoRa antenna with mast clamp and 3 m cable.",
        "- HL-PYR, HL-UV, HL-SOIL: optional sensors, see section 8.",
        "Values on this sheet may change between hardware revisions. The revision history is "
        "kept in the project repository together with the design files.",
    ]),
]


def _spec_lines():
    """SPEC_SECTIONS wrapped to SPEC_WIDTH and laid out in pages of SPEC_LINES lines.

    A bullet or paragraph is never split across pages, and a heading stays with its first one.
    """
    units = []
    for heading, paragraphs in SPEC_SECTIONS:
        for k, para in enumerate(paragraphs):
            if para.startswith("- "):
                unit = textwrap.wrap(para, SPEC_WIDTH, subsequent_indent="  ")
                if k + 1 == len(paragraphs) or not paragraphs[k + 1].startswith("- "):
                    unit.append("")            # a blank line after the last bullet of a list
            else:
                unit = textwrap.wrap(para, SPEC_WIDTH) + [""]
                if k and paragraphs[k - 1].startswith("- "):
                    unit.insert(0, "")
            if k == 0:
                unit = [heading, ""] + unit
            units.append(unit)
    pages, page = [], []
    for unit in units:
        assert len(unit) <= SPEC_LINES, unit[0]
        if page and len(page) + len(unit) - (unit[-1] == "") > SPEC_LINES:
            pages.append(page)
            page = []
        if not page:
            unit = unit[1:] if unit[0] == "" else unit   # no blank line at the top of a page
        page += unit
        del page[SPEC_LINES:]                          # (only ever a trailing blank line)
    pages.append(page)
    return pages


def _pdf_string(text):
    """A PDF literal string in WinAnsiEncoding (cp1252), with \\, ( and ) escaped."""
    out = []
    for b in text.encode("cp1252"):
        if b in b"\\()":
            out.append("\\" + chr(b))
        elif 32 <= b < 127:
            out.append(chr(b))
        else:
            out.append("\\%03o" % b)
    return "(" + "".join(out) + ")"


def make_docs():
    pages = _spec_lines()
    n = len(pages)
    # Objects: 1 catalog, 2 pages tree, 3 font, 4 info, then a page and its contents per page.
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: "<< /Type /Pages /Kids [%s] /Count %d >>" % (" ".join(f"{5 + 2 * i} 0 R" for i in range(n)), n),
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: "<< /Title %s /Author (The Harbor Lantern project) /Subject %s /Creator %s >>" % (
            _pdf_string(SPEC_TITLE), _pdf_string("Sensor ranges, tolerances and ratings"),
            _pdf_string("embedpipe sample_data/make_sample_data.py")),
    }
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"]
        for j, line in enumerate(lines):
            if j:
                ops.append("T*")
            if line:
                ops.append(_pdf_string(line) + " Tj")
        ops.append("ET")
        ops += ["BT", "/F1 8 Tf", "72 48 Td", _pdf_string(f"{SPEC_TITLE} - page {i + 1} of {n}") + " Tj", "ET"]
        stream = ("\n".join(ops) + "\n").encode("ascii")
        page_id, content_id = 5 + 2 * i, 6 + 2 * i
        objects[page_id] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>")
        objects[content_id] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream"

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        body = objects[num]
        out += b"%d 0 obj\n" % num + (body if isinstance(body, bytes) else body.encode("ascii")) + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)

    path = os.path.join(HERE, "docs", "specifications.pdf")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(out)
    print(f"wrote docs/specifications.pdf ({n} pages, {len(out)} bytes)")


TARGETS = {"articles": make_articles, "images": make_images, "docs": make_docs}


def main(argv):
    names = argv or list(TARGETS)
    unknown = [a for a in names if a not in TARGETS]
    if unknown:
        sys.exit(f"unknown target {', '.join(unknown)}; choose from: {', '.join(TARGETS)}")
    for name in TARGETS:          # fixed order, whatever the order of the arguments
        if name in names:
            TARGETS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
