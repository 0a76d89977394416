#!/usr/bin/env python3
"""
Writes Veil's own benign corpus (benign.jsonl beside this file): requests of
the kinds real sites receive, from real browsers and API clients, for a shop,
a forum with code snippets, JSON and GraphQL APIs, OAuth and SAML sign-in,
uploads, a wiki, webmail, a blog with a rich-text editor, search boxes,
analytics beacons and static assets.

Deterministic (a fixed seed): re-running it rewrites the same file.  The
format is the shared replay scorer's --jsonl format, one request per line:
{"id", "kind": "benign", "class", "method", "path", "headers": [[name,
value], ...], "body" | "body_b64"}.

    python3 bench/waf/benign/generate.py [--count-scale N]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import urllib.parse
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent

BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.80",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
]
API_CLIENTS = [
    "okhttp/4.12.0", "python-requests/2.32.3", "axios/1.7.7", "Dart/3.5 (dart:io)",
    "MyShopApp/5.12.1 (iPhone; iOS 18.1; Scale/3.00)", "Go-http-client/1.1", "curl/8.5.0",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", "PostmanRuntime/7.42.0",
]
LANGS = ["en-US,en;q=0.9", "en-GB,en;q=0.8", "de-DE,de;q=0.9,en;q=0.7", "fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7",
         "es-ES,es;q=0.9", "ja,en-US;q=0.9,en;q=0.8", "pt-BR,pt;q=0.9,en;q=0.8", "nl-NL,nl;q=0.9,en;q=0.6"]

FIRST = ["Anna", "Ben", "Chloé", "David", "Émile", "Fatima", "Grace", "Hiro", "Ingrid", "Jamal", "Katarzyna",
         "Liam", "María", "Noah", "Olivia", "Priya", "Quentin", "Rosa", "Søren", "Tomás", "Uma", "Viktor",
         "Wei", "Xavier", "Yara", "Zoë", "Seán", "D'Arcy", "Mary-Jane", "Jean-Luc"]
LAST = ["O'Reilly", "Smith", "Müller", "García", "Nguyen", "Kowalski", "Rossi", "Dubois", "Tanaka", "Johansson",
        "van der Berg", "O'Brien", "McDonald", "Fernández", "Kim", "Andersson", "Silva", "Schröder", "D'Angelo"]
CITIES = ["Springfield", "Lyon", "München", "São Paulo", "Kraków", "Osaka", "Dublin", "Zürich", "Montréal", "Austin",
          "St. John's", "Winston-Salem", "Stratford-upon-Avon", "Den Haag"]
STREETS = ["12 Main St.", "Flat 3, 41 King's Road", "Rue de l'Église 7", "Hauptstraße 5a", "1600 Amphitheatre Pkwy",
           "Apt #4B, 220 W 42nd St", "Via Roma 10/12", "PO Box 1024", "5-2-1 Ginza, Chuo-ku"]
WORDS = (  # noqa: SIM905 - easier to read as prose
    "the a of and to in is it you that for on with as was at be this have from or one had by but not what "
         "all were we when your can said there use an each which she do how their if will up other about out "
         "many then them these so some her would make like him into time has look two more write go see number "
         "no way could people my than first water been call who oil its now find long down day did get come made "
         "may part over new sound take only little work know place year live me back give most very after thing "
         "our just name good sentence man think say great where help through much before line right too mean old "
         "any same tell boy follow came want show also around form three small set put end does another well large "
         "must big even such because turn here why ask went men read need land different home us move try kind "
         "hand picture again change off play spell air away animal house point page letter mother answer found "
         "study still learn should world high every near add food between own below country plant last school "
         "father keep tree never start city earth eye light thought head under story saw left few while along "
         "might close something seem next hard open example begin life always those both paper together got group "
         "often run important until children side feet car mile night walk white sea began grow took river four "
         "carry state once book hear stop without second later miss idea enough eat face watch far really almost "
         "let above girl sometimes mountain cut young talk soon list song being leave family union select order "
         "drop update delete insert create table join where from script alert execute shell command system "
         "include import require file path source").split()

PRODUCTS = ["Merino wool sweater", "Trail running shoes", "Ceramic pour-over coffee dripper", "USB-C hub (7-in-1)",
            "Noise-cancelling headphones", "Cast iron skillet 12\"", "Kids' rain jacket", "Yoga mat 6mm",
            "Mechanical keyboard – brown switches", "LED desk lamp w/ wireless charger", "Organic green tea 100g",
            "Women's 5-pocket jeans", "Stainless steel water bottle 750ml", "Board game: Catan", "Drill bit set (50 pcs)"]
CATEGORIES = ["mens", "womens", "kids", "home-kitchen", "electronics", "outdoor", "sports", "toys", "garden", "books"]
SEARCHES = ["red dress", "running shoes size 10", "o'reilly python book", "tom & jerry dvd", "c++ primer",
            "usb c cable 2m", "select comfort mattress", "union jack flag", "drop earrings gold", "table lamp",
            "order tracking", "how to update firmware", "delete my account", "5' 10\" jeans", "50% off sale",
            "100% cotton t-shirt", "gift card $50", "\"noise cancelling\" headphones", "café au lait mug",
            "size: L / color: navy", "iphone 15 case -leather", "kids' bike 16\"", "2+2 puzzle", "lamp OR light",
            "where is my order?", "return policy (30 days)", "coupon code SAVE10", "best union of colors",
            "script writing course", "shell jacket", "alert bracelet medical", "execute order 66 t-shirt",
            "command strips", "system of a down vinyl", "import duty costs", "password manager",
            "java coffee beans", "python snake toy", "ruby earrings", "perl necklace", "echo dot",
            "cat food grain free", "ls 300 lexus parts", "curl cream for hair", "bash party supplies",
            "the best union of colors and shapes", "select the right size", "time and date watch",
            "at&t phone", "r&d department", "AT&T prepaid", "who's who 2024", "what's new", "#hashtag ideas",
            "fish & chips recipe", "rock'n'roll poster", "1/2 inch socket", "3/8\" drive", "50/50 blend",
            "<3 valentine card", "a < b math workbook", "x > y puzzle", "email@example.com newsletter"]
TAGS = ["python", "javascript", "postgresql", "docker", "css", "react", "linux", "networking", "rust", "go"]

PY_SNIPPETS = [
    "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint(fib(10))\n```",
    "```python\nimport json\n\nwith open('data.json') as f:\n    data = json.load(f)\nfor item in data['items']:\n    print(item['name'], item.get('price', 0))\n```",
    "```python\nclass Cache:\n    def __init__(self, size=128):\n        self.size = size\n        self._data = {}\n\n    def get(self, key, default=None):\n        return self._data.get(key, default)\n```",
    "```python\nimport time\nfor attempt in range(3):\n    try:\n        resp = session.get(url, timeout=5)\n        break\n    except requests.Timeout:\n        time.sleep(2 ** attempt)\n```",
    "```python\nfrom dataclasses import dataclass\n\n@dataclass\nclass Point:\n    x: float\n    y: float\n\n    def dist(self, other: 'Point') -> float:\n        return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5\n```",
    "```python\nresult = [x * 2 for x in values if x % 2 == 0]\nprint(f\"{len(result)} even values, max={max(result, default=None)}\")\n```",
]
JS_SNIPPETS = [
    "```js\nconst res = await fetch('/api/items?page=2');\nconst items = await res.json();\nitems.forEach(item => console.log(item.name));\n```",
    "```javascript\nfunction debounce(fn, ms) {\n  let t;\n  return (...args) => {\n    clearTimeout(t);\n    t = setTimeout(() => fn(...args), ms);\n  };\n}\n```",
    "```jsx\nexport default function Button({ label, onClick }) {\n  return <button className=\"btn\" onClick={onClick}>{label}</button>;\n}\n```",
    "```ts\ninterface User { id: number; name: string; email?: string }\nconst byId = new Map<number, User>(users.map(u => [u.id, u]));\n```",
    "```js\nconst total = cart.items.reduce((sum, i) => sum + i.price * i.qty, 0);\ndocument.querySelector('#total').textContent = total.toFixed(2);\n```",
]
CSS_SNIPPETS = [
    "```css\n.card {\n  display: grid;\n  grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));\n  gap: 1rem;\n}\n```",
    "```css\n@media (max-width: 600px) {\n  nav ul { flex-direction: column; }\n  .hero h1 { font-size: 1.5rem; }\n}\n```",
]
GO_RUST_SNIPPETS = [
    "```go\nfunc handler(w http.ResponseWriter, r *http.Request) {\n\tname := r.URL.Query().Get(\"name\")\n\tfmt.Fprintf(w, \"Hello, %s!\", name)\n}\n```",
    "```rust\nfn main() {\n    let v: Vec<i32> = (1..=10).filter(|x| x % 3 == 0).collect();\n    println!(\"{:?}\", v);\n}\n```",
]
SHELL_SNIPPETS = [
    "```\n$ docker compose up -d\n$ docker compose logs -f web\n```",
    "```bash\ngit checkout -b feature/login\ngit commit -am \"Add login form\"\ngit push origin feature/login\n```",
    "```\npip install -r requirements.txt\npython manage.py migrate\n```",
]
SQL_PROSE = [
    "I tried adding an index on `orders(customer_id, created_at)` and the query went from 4s to 40ms.",
    "Is it better to use a JOIN or a subquery here? The planner seems to pick a nested loop either way.",
    "We store prices as integer cents to avoid float rounding; the ORM handles the conversion.",
    "Remember to run VACUUM ANALYZE after the bulk import, otherwise the statistics are stale.",
]
PROSE = [
    "Thanks for the quick reply! That fixed it for me.",
    "Has anyone else seen this after upgrading to 2.4? It worked fine on 2.3.",
    "I'd recommend reading the docs first - they're actually pretty good (see the \"Getting started\" section).",
    "Not sure if this is the right place to ask, but: how do you handle time zones across the app?",
    "+1, same here. Workaround: restart the service, then clear the cache.",
    "We're seeing ~3% of requests fail with a 502 when the pool is exhausted; raising max_connections to 200 helped.",
    "The union of both sets gives you every user; the intersection only the ones in both lists.",
    "Select the best option from the drop-down, then press \"Update\" to save your changes.",
    "Don't forget: the meeting is at 10:30 (CET), not 10:00!",
    "It's a 50/50 call; I'd go with option B because it's cheaper & easier to maintain.",
    "Question about the return policy: can I return an item after 30 days if it's unopened?",
    "My order #10492 still says \"processing\" - any idea when it'll ship?",
    "Great product!!! 5/5 would buy again :)",
    "Fits a bit small; order one size up. The colour is exactly as shown.",
    "Bought it for my daughter's birthday - she loves it <3",
    "Shipping took 2 weeks to Canada, but customer service was helpful.",
    "Works with my 2019 MacBook Pro via USB-C; HDMI output is 4K@30Hz only.",
    "The instructions say \"insert tab A into slot B\" but there is no slot B...",
    "Price went from $49.99 to $39.99 the day after I bought it :(",
    "Is this dishwasher-safe? The label says hand wash only.",
]
EMAIL_BODIES = [
    "Hi {name},\n\nThanks for your message. I've attached the updated invoice (INV-2024-0117).\n\nBest regards,\n{me}\n--\n{me} | Accounts\nAcme Ltd., 12 Main St., Springfield\nTel: +1 (555) 010-4477",
    "Hello,\n\nCould we move Thursday's call to 3pm? Something came up in the morning.\n\nCheers,\n{me}",
    "Hi all,\n\nReminder: the office will be closed on Monday. Please submit timesheets by Friday 5pm.\n\nThanks!",
    "{name},\n\nSee below.\n\n---------- Forwarded message ---------\nFrom: Support <support@vendor.example>\nDate: Tue, 3 Dec 2024 at 09:14\nSubject: Re: Ticket #4411\nTo: {me} <me@example.org>\n\nYour ticket has been resolved. Select \"Reopen\" if the issue persists.\n",
    "Dear {name},\n\n> Can you send the slides?\n\nSure - here they are. Let me know if the link doesn't work: https://files.example.org/s/AbC123?dl=1\n\nKind regards\n{me}",
    "Hi,\n\n-----Original Message-----\nFrom: {name}\nSent: Monday, December 2, 2024 4:12 PM\nTo: {me}\nSubject: Budget\n\nNumbers attached; total is $12,400 (incl. 20% VAT).\n",
]
WIKI_TEXTS = [
    "== History ==\nThe town was founded in 1821 by settlers from [[Ohio]].<ref>{{cite book |last=Smith |first=J. |title=Local History |year=1998 |page=42}}</ref>\n\n=== 20th century ===\nIn 1953 the railway station closed.\n",
    "{{Infobox person\n| name = Ada Lovelace\n| birth_date = {{birth date|1815|12|10}}\n| occupation = Mathematician\n}}\n'''Ada Lovelace''' was an English mathematician known for her work on the [[Analytical Engine]].",
    "{| class=\"wikitable sortable\"\n! Year !! Team !! Points\n|-\n| 2019 || Rovers || 71\n|-\n| 2020 || United || 68\n|}\n",
    "* Item one\n* Item two with a [https://example.org/docs external link]\n# First step\n# Second step\n\n<code>pip install foo</code> installs the package.",
    "See also: [[List of rivers of France|rivers]], [[Category:Geography]]. The ''Loire'' is the longest river (1,006&nbsp;km).",
]
HTML_RICH = [
    "<p>Our new <strong>winter collection</strong> is here! Check out the <a href=\"https://shop.example.com/winter\">lookbook</a>.</p>",
    "<h2>Recipe</h2><ul><li>200g flour</li><li>2 eggs</li><li>1 cup milk</li></ul><p>Mix &amp; bake at 180&deg;C for 25 minutes.</p>",
    "<p><img src=\"/uploads/2024/11/kitchen.jpg\" alt=\"Our kitchen after the renovation\" width=\"800\" height=\"600\"></p><p>Before &amp; after photos below.</p>",
    "<blockquote><p>Simplicity is prerequisite for reliability.</p></blockquote><p>&mdash; Edsger W. Dijkstra</p>",
    "<p>Download the <a href=\"/files/manual.pdf\" target=\"_blank\" rel=\"noopener\">user manual (PDF, 2&nbsp;MB)</a>.</p><table><tr><td>Model</td><td>X200</td></tr></table>",
    "<p style=\"text-align: center;\"><em>Photo credit: Jane Doe</em></p><p>Event starts at <b>7pm</b> &ndash; doors open at 6:30.</p>",
]
GRAPHQL = [
    ("query GetProduct($id: ID!) {\n  product(id: $id) {\n    id\n    name\n    price { amount currency }\n    images(first: 4) { url alt }\n    __typename\n  }\n}", {"id": "gid://shop/Product/8841"}),
    ("query Orders($first: Int, $after: String) { viewer { orders(first: $first, after: $after) { edges { node { id number total status } } pageInfo { hasNextPage endCursor } } } }", {"first": 20, "after": "YXJyYXljb25uZWN0aW9uOjE5"}),
    ("mutation AddToCart($input: CartLineInput!) { cartLinesAdd(input: $input) { cart { id totalQuantity } userErrors { field message } } }", {"input": {"merchandiseId": "gid://shop/ProductVariant/1201", "quantity": 2}}),
    ("fragment UserFields on User { id login avatarUrl }\nquery { viewer { ...UserFields followers(first: 5) { nodes { ...UserFields } } } }", {}),
    ("mutation UpdateProfile($bio: String!) { updateProfile(bio: $bio) { ok errors } }", {"bio": "Coffee, code & climbing. Opinions are my own; select quotes below."}),
    ("query Search($q: String!) { search(query: $q, type: REPOSITORY, first: 10) { repositoryCount nodes { ... on Repository { nameWithOwner stargazerCount } } } }", {"q": "language:python stars:>1000 select"}),
]


class Corpus:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.rows: list[dict] = []

    # -- helpers ---------------------------------------------------------------------

    def pick(self, seq):
        return self.rnd.choice(seq)

    def words(self, low: int, high: int) -> str:
        return " ".join(self.pick(WORDS) for _ in range(self.rnd.randint(low, high)))

    def sentence(self) -> str:
        text = self.words(6, 18)
        return text[0].upper() + text[1:] + self.pick([".", ".", ".", "!", "?"])

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rnd.randint(2, 5)))

    def token(self, n: int = 32, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rnd.choice(alphabet) for _ in range(n))

    def b64url(self, data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    def jwt(self) -> str:
        header = self.b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = self.b64url(json.dumps({
            "sub": str(uuid.UUID(int=self.rnd.getrandbits(128))), "iss": "https://auth.example.com/",
            "aud": "api", "exp": 1733400000 + self.rnd.randint(0, 99999), "scope": "read:orders write:cart",
            "email": f"{self.pick(FIRST).lower()}@example.com"}).encode())
        return f"{header}.{payload}.{self.b64url(self.rnd.randbytes(32))}"

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rnd.getrandbits(128)))

    def email(self) -> str:
        first = self.pick(FIRST).lower().replace("'", "").replace(" ", "")
        return f"{first}.{self.pick(LAST).lower().replace(chr(39), '').replace(' ', '')}{self.rnd.randint(1, 99)}@" \
               + self.pick(["example.com", "mail.example.org", "gmail.com", "outlook.com", "proton.me"])

    def cookies(self) -> str:
        jar = [f"session={self.token(40)}", f"_ga=GA1.2.{self.rnd.randint(10**8, 10**9)}.{self.rnd.randint(10**9, 2 * 10**9)}",
               f"_gid=GA1.2.{self.rnd.randint(10**8, 10**9)}.{self.rnd.randint(10**9, 2 * 10**9)}",
               "cookie_consent=" + urllib.parse.quote(json.dumps({"necessary": True, "analytics": self.rnd.random() < 0.5, "marketing": False})),
               f"csrftoken={self.token(32)}", "theme=dark", f"lang={self.pick(['en', 'de', 'fr'])}",
               "cart=" + base64.b64encode(json.dumps({"items": [self.rnd.randint(1, 999)], "v": 2}).encode()).decode(),
               f"remember_token={self.rnd.randint(1, 9999)}|{self.token(60)}",
               "flask=" + self.b64url(json.dumps({"user_id": self.rnd.randint(1, 10**5), "_fresh": True}).encode()) + "." + self.token(6) + "." + self.token(27),
               f"_hjSessionUser_123456={self.b64url(json.dumps({'id': self.uuid(), 'created': 1733300000000}).encode())}",
               f"XSRF-TOKEN={urllib.parse.quote(self.token(40) + '==')}", f"recently_viewed={urllib.parse.quote('123,456,789')}"]
        return "; ".join(self.rnd.sample(jar, self.rnd.randint(1, 6)))

    def browser(self, referer: str | None = None, accept: str = "html", extra=()) -> list[list[str]]:
        accepts = {
            "html": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
            "json": "application/json, text/plain, */*",
            "any": "*/*",
            "image": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
            "css": "text/css,*/*;q=0.1",
        }
        headers = [["User-Agent", self.pick(BROWSERS)], ["Accept", accepts[accept]],
                   ["Accept-Language", self.pick(LANGS)], ["Accept-Encoding", "gzip, deflate, br, zstd"]]
        if self.rnd.random() < 0.5:
            headers += [["Sec-Fetch-Site", self.pick(["same-origin", "none", "cross-site"])],
                        ["Sec-Fetch-Mode", "navigate" if accept == "html" else "cors"],
                        ["Sec-Fetch-Dest", "document" if accept == "html" else "empty"]]
        if self.rnd.random() < 0.4:
            headers += [["sec-ch-ua", '"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"'],
                        ["sec-ch-ua-mobile", "?0"], ["sec-ch-ua-platform", '"Windows"']]
        if referer:
            headers.append(["Referer", referer])
        if self.rnd.random() < 0.8:
            headers.append(["Cookie", self.cookies()])
        if self.rnd.random() < 0.2:
            headers.append(["If-None-Match", f'W/"{self.token(16, string.hexdigits.lower())}"'])
        headers.extend([list(h) for h in extra])
        return headers

    def api_headers(self, extra=()) -> list[list[str]]:
        headers = [["User-Agent", self.pick(API_CLIENTS + BROWSERS)], ["Accept", "application/json"],
                   ["Authorization", f"Bearer {self.jwt()}"]]
        if self.rnd.random() < 0.3:
            headers.append(["X-Request-ID", self.uuid()])
        if self.rnd.random() < 0.2:
            headers.append(["X-Api-Key", self.token(40)])
        headers.extend([list(h) for h in extra])
        return headers

    def add(self, cls: str, method: str, path: str, headers, body: str | bytes | None = None) -> None:
        row = {"id": f"{cls}-{len(self.rows) + 1}", "kind": "benign", "class": cls, "method": method,
               "path": path, "headers": headers}
        if isinstance(body, bytes):
            row["body_b64"] = base64.b64encode(body).decode()
        elif body is not None:
            row["body"] = body
        self.rows.append(row)

    @staticmethod
    def q(params) -> str:
        return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)

    def form(self, params) -> tuple[list[list[str]], str]:
        return [["Content-Type", "application/x-www-form-urlencoded"]], urllib.parse.urlencode(params)

    def json_body(self, doc) -> tuple[list[list[str]], str]:
        return [["Content-Type", "application/json"]], json.dumps(doc, ensure_ascii=self.rnd.random() < 0.3)

    # -- applications ----------------------------------------------------------------

    def shop(self, n: int) -> None:
        site = "https://shop.example.com"
        for _ in range(n):
            kind = self.rnd.random()
            if kind < 0.25:
                slug = self.pick(PRODUCTS).lower().replace(" ", "-").replace("'", "").replace('"', "")
                slug = urllib.parse.quote(slug)
                params = {}
                if self.rnd.random() < 0.5:
                    params["variant"] = str(self.rnd.randint(10**6, 10**7))
                if self.rnd.random() < 0.3:
                    params.update({"utm_source": self.pick(["newsletter", "google", "facebook"]),
                                   "utm_medium": self.pick(["email", "cpc", "social"]),
                                   "utm_campaign": self.pick(["black-friday-2024", "winter_sale", "new arrivals"])})
                path = f"/products/{slug}" + ("?" + self.q(params) if params else "")
                self.add("shop", "GET", path, self.browser(site + "/collections/" + self.pick(CATEGORIES)))
            elif kind < 0.45:
                params = {"page": self.rnd.randint(1, 20), "sort": self.pick(["price_asc", "price_desc", "newest", "best-selling"]),
                          "color": self.pick(["red", "navy", "black", "olive green"]), "size": self.pick(["S", "M", "L", "XL", "10.5"]),
                          "price_min": self.rnd.randint(0, 50), "price_max": self.rnd.randint(60, 500),
                          "in_stock": self.pick(["1", "true"])}
                keys = self.rnd.sample(list(params), self.rnd.randint(2, len(params)))
                self.add("shop", "GET", f"/collections/{self.pick(CATEGORIES)}?" + self.q({k: params[k] for k in keys}),
                         self.browser(site + "/"))
            elif kind < 0.6:
                params = {"q": self.pick(SEARCHES), "type": "product"}
                if self.rnd.random() < 0.4:
                    params["page"] = self.rnd.randint(2, 5)
                self.add("shop", "GET", "/search?" + self.q(params), self.browser(site + "/"))
            elif kind < 0.7:
                h, b = self.form({"form_type": "product", "utf8": "✓", "id": self.rnd.randint(10**6, 10**7),
                                  "quantity": self.rnd.randint(1, 4), "properties[Engraving]": self.pick(["", "Happy 30th, Sam!", "J & M 2024", "Love you <3"]),
                                  "authenticity_token": self.token(43) + "=="})
                self.add("shop", "POST", "/cart/add", self.browser(site + "/products/x", extra=h), b)
            elif kind < 0.8:
                name, last = self.pick(FIRST), self.pick(LAST)
                h, b = self.form({"checkout[email]": self.email(), "checkout[shipping_address][first_name]": name,
                                  "checkout[shipping_address][last_name]": last, "checkout[shipping_address][address1]": self.pick(STREETS),
                                  "checkout[shipping_address][city]": self.pick(CITIES), "checkout[shipping_address][zip]": self.pick(["94103", "SW1A 1AA", "75001", "10115", "H3Z 2Y7"]),
                                  "checkout[shipping_address][phone]": self.pick(["+1 (555) 010-2233", "+44 20 7946 0958", "06 12 34 56 78"]),
                                  "checkout[note]": self.pick(["", "Please leave at the back door; the dog is friendly!", "Gift - no invoice in the box please", "Ring twice (bell #2)"]),
                                  "checkout[buyer_accepts_marketing]": "0", "step": "contact_information"})
                self.add("shop", "POST", f"/checkouts/{self.token(32, 'abcdef0123456789')}", self.browser(site + "/cart", extra=h), b)
            elif kind < 0.9:
                h, b = self.form({"review[rating]": self.rnd.randint(1, 5), "review[title]": self.pick(["Love it", "Meh.", "Not as described", "Perfect gift!", "5 stars - would buy again"]),
                                  "review[body]": self.pick(PROSE) + " " + self.sentence(), "review[author]": f"{self.pick(FIRST)} {self.pick(LAST)[0]}.",
                                  "review[email]": self.email()})
                self.add("shop", "POST", "/reviews", self.browser(site + "/products/x", extra=h), b)
            else:
                h, b = self.json_body({"items": [{"id": self.rnd.randint(1, 10**6), "quantity": self.rnd.randint(1, 3),
                                                  "properties": {"gift_wrap": self.rnd.random() < 0.5, "note": self.pick(["", "For Dad", "Don't open before Xmas!"])}}],
                                       "sections": "cart-drawer,cart-icon-bubble"})
                self.add("shop", "POST", "/cart/add.js", self.browser(site + "/", "json", extra=h + [["X-Requested-With", "XMLHttpRequest"]]), b)

    def forum(self, n: int) -> None:
        site = "https://forum.example.org"
        for _ in range(n):
            kind = self.rnd.random()
            if kind < 0.3:
                self.add("forum", "GET", f"/t/{self.words(2, 5).replace(' ', '-')}/{self.rnd.randint(1, 99999)}" +
                         (f"?page={self.rnd.randint(2, 9)}" if self.rnd.random() < 0.3 else ""), self.browser(site + "/latest"))
            elif kind < 0.4:
                self.add("forum", "GET", "/search?" + self.q({"q": self.pick(SEARCHES + ["tags:" + self.pick(TAGS), "@admin docker", "status:solved postgres index"])}),
                         self.browser(site + "/"))
            else:
                parts = [self.pick(PROSE)]
                snippet = self.rnd.random()
                if snippet < 0.25:
                    parts.append(self.pick(PY_SNIPPETS))
                elif snippet < 0.45:
                    parts.append(self.pick(JS_SNIPPETS))
                elif snippet < 0.55:
                    parts.append(self.pick(CSS_SNIPPETS))
                elif snippet < 0.62:
                    parts.append(self.pick(GO_RUST_SNIPPETS))
                elif snippet < 0.68:
                    parts.append(self.pick(SHELL_SNIPPETS))
                elif snippet < 0.78:
                    parts.append(self.pick(SQL_PROSE))
                if self.rnd.random() < 0.3:
                    parts.insert(0, f"[quote=\"{self.pick(FIRST).lower()}, post:{self.rnd.randint(1, 40)}, topic:{self.rnd.randint(1, 9999)}\"]\n{self.pick(PROSE)}\n[/quote]")
                if self.rnd.random() < 0.3:
                    parts.append(f"See https://docs.example.org/{self.pick(TAGS)}/latest/#{self.words(1, 2).replace(' ', '-')} and @{self.pick(FIRST).lower()}'s answer above.")
                raw = "\n\n".join(parts)
                if self.rnd.random() < 0.5:
                    h, b = self.json_body({"raw": raw, "topic_id": self.rnd.randint(1, 99999), "category": self.rnd.randint(1, 30),
                                           "reply_to_post_number": self.rnd.choice([None, self.rnd.randint(1, 40)]),
                                           "archetype": "regular", "nested_post": True})
                    self.add("forum", "POST", "/posts.json", self.browser(site + "/t/x/1", "json", extra=h + [["X-CSRF-Token", self.token(86)], ["X-Requested-With", "XMLHttpRequest"]]), b)
                else:
                    h, b = self.form({"raw": raw, "topic_id": self.rnd.randint(1, 99999), "title": self.sentence()[:80],
                                      "tags[]": self.pick(TAGS)})
                    self.add("forum", "POST", "/posts", self.browser(site + "/new-topic", extra=h), b)

    def api(self, n: int) -> None:
        for _ in range(n):
            kind = self.rnd.random()
            if kind < 0.3:
                params = {"status": self.pick(["shipped", "pending", "cancelled,refunded"]), "limit": self.pick([10, 25, 50, 100]),
                          "offset": self.rnd.randint(0, 500), "sort": self.pick(["-created_at", "total", "updated_at"]),
                          "fields": self.pick(["id,total,status", "id,customer.email,items", "*"]),
                          "created_at[gte]": "2024-11-01T00:00:00Z", "q": self.pick(SEARCHES)}
                keys = self.rnd.sample(list(params), self.rnd.randint(1, 5))
                self.add("api", "GET", f"/api/v{self.rnd.randint(1, 3)}/orders?" + self.q({k: params[k] for k in keys}), self.api_headers())
            elif kind < 0.45:
                self.add("api", "GET", f"/api/v2/users/{self.uuid()}" + self.pick(["", "/addresses", "/orders?include=items", "/preferences"]), self.api_headers())
            elif kind < 0.65:
                h, b = self.json_body({"email": self.email(), "name": f"{self.pick(FIRST)} {self.pick(LAST)}",
                                       "password": self.pick(["P@ssw0rd!2024", "correct horse battery staple", "S3cur3'Pa$$\"word", "hunter2#Sunny&Day"]),
                                       "address": {"line1": self.pick(STREETS), "city": self.pick(CITIES), "country": self.pick(["US", "GB", "FR", "DE", "JP"])},
                                       "marketing_opt_in": self.rnd.random() < 0.5, "tags": self.rnd.sample(TAGS, 2),
                                       "metadata": {"source": self.pick(["ios", "android", "web"]), "referrer": self.pick(["", "https://www.google.com/", "friend"])}})
                self.add("api", "POST", "/api/v2/users", self.api_headers(h), b)
            elif kind < 0.75:
                h, b = self.json_body([{"op": self.pick(["replace", "add", "remove"]), "path": self.pick(["/name", "/address/city", "/tags/0", "/preferences/newsletter"]),
                                        "value": self.pick(["Jean-Luc D'Arcy", "Zürich", True, "select-all", 42])} for _ in range(self.rnd.randint(1, 3))])
                self.add("api", "PATCH", f"/api/v2/users/{self.uuid()}", self.api_headers([["Content-Type", "application/json-patch+json"]]), b)
            elif kind < 0.85:
                h, b = self.json_body({"order_id": self.rnd.randint(10**5, 10**6), "items": [
                    {"sku": f"SKU-{self.rnd.randint(1000, 9999)}", "qty": self.rnd.randint(1, 5), "price": round(self.rnd.uniform(1, 300), 2),
                     "description": self.pick(PRODUCTS)} for _ in range(self.rnd.randint(1, 12))],
                    "shipping": {"method": self.pick(["standard", "express", "pickup"]), "instructions": self.pick(["", "Leave with neighbour at #12", "Call on arrival: +44 20 7946 0958"])},
                    "coupon": self.pick([None, "SAVE10", "WELCOME-2024"]), "currency": "EUR", "created_at": "2024-12-04T10:15:30.123Z"})
                self.add("api", "POST", "/api/v1/orders", self.api_headers(h + [["Idempotency-Key", self.uuid()]]), b)
            elif kind < 0.92:
                self.add("api", "DELETE", f"/api/v2/sessions/{self.uuid()}", self.api_headers())
            else:
                h, b = self.json_body({"event": self.pick(["order.created", "payment.succeeded", "customer.updated"]), "id": "evt_" + self.token(24),
                                       "data": {"object": {"id": "pi_" + self.token(24), "amount": self.rnd.randint(100, 10**6), "currency": "usd",
                                                           "description": self.pick(PRODUCTS), "metadata": {"order": str(self.rnd.randint(1, 10**6))}}},
                                       "created": 1733300000 + self.rnd.randint(0, 10**5)})
                self.add("api", "POST", "/webhooks/payments", [["User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)"], ["Accept", "*/*; q=0.5, application/xml"],
                                                               ["Stripe-Signature", f"t={1733300000 + self.rnd.randint(0, 9999)},v1={self.token(64, 'abcdef0123456789')}"]] + h, b)

    def graphql(self, n: int) -> None:
        for _ in range(n):
            query, variables = self.pick(GRAPHQL)
            if self.rnd.random() < 0.75:
                h, b = self.json_body({"operationName": None, "query": query, "variables": variables})
                self.add("graphql", "POST", "/graphql", self.api_headers(h) if self.rnd.random() < 0.5 else self.browser("https://app.example.com/", "json", extra=h), b)
            else:
                params = {"query": query, "variables": json.dumps(variables)}
                if self.rnd.random() < 0.5:
                    params = {"operationName": "GetProduct", "variables": json.dumps(variables),
                              "extensions": json.dumps({"persistedQuery": {"version": 1, "sha256Hash": self.token(64, "0123456789abcdef")}})}
                self.add("graphql", "GET", "/graphql?" + self.q(params), self.browser("https://app.example.com/", "json"))

    def oauth(self, n: int) -> None:
        for _ in range(n):
            kind = self.rnd.random()
            redirect = self.pick(["https://app.example.com/auth/callback", "https://app.example.com/oauth2/callback?next=%2Fdashboard",
                                  "com.example.app:/oauth2redirect", "http://127.0.0.1:53682/", "http://localhost:3000/api/auth/callback/github"])
            if kind < 0.3:
                params = {"response_type": "code", "client_id": self.token(20), "redirect_uri": redirect,
                          "scope": self.pick(["openid profile email", "read:user user:email", "openid offline_access https://graph.microsoft.com/Mail.Read"]),
                          "state": self.token(32), "nonce": self.token(24), "code_challenge": self.b64url(self.rnd.randbytes(32)),
                          "code_challenge_method": "S256", "prompt": self.pick(["consent", "select_account", "login"])}
                self.add("oauth", "GET", "/oauth/authorize?" + self.q(params), self.browser("https://app.example.com/login"))
            elif kind < 0.55:
                params = {"code": self.token(40, string.ascii_letters + string.digits + "-_."), "state": self.token(32)}
                if self.rnd.random() < 0.3:
                    params.update({"scope": "email profile openid https://www.googleapis.com/auth/userinfo.email", "authuser": "0", "prompt": "none"})
                self.add("oauth", "GET", "/auth/callback?" + self.q(params), self.browser("https://accounts.example-idp.com/"))
            elif kind < 0.75:
                h, b = self.form({"grant_type": "authorization_code", "code": self.token(40), "redirect_uri": redirect,
                                  "client_id": self.token(20), "code_verifier": self.b64url(self.rnd.randbytes(48))})
                self.add("oauth", "POST", "/oauth/token", [["User-Agent", self.pick(API_CLIENTS)], ["Accept", "application/json"],
                                                           ["Authorization", "Basic " + base64.b64encode(f"{self.token(20)}:{self.token(40)}".encode()).decode()]] + h, b)
            elif kind < 0.85:
                h, b = self.form({"grant_type": "refresh_token", "refresh_token": self.token(64), "client_id": self.token(20)})
                self.add("oauth", "POST", "/oauth/token", [["User-Agent", self.pick(API_CLIENTS)], ["Accept", "application/json"]] + h, b)
            else:
                assertion = (f'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
                             f'ID="_{self.token(32, "abcdef0123456789")}" Version="2.0" IssueInstant="2024-12-04T10:00:00Z" Destination="https://app.example.com/saml/acs">'
                             f'<saml:Issuer>https://idp.example.com/metadata</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>'
                             f'<saml:Assertion ID="_{self.token(32, "abcdef0123456789")}" Version="2.0"><saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{self.email()}</saml:NameID></saml:Subject>'
                             f'<saml:AttributeStatement><saml:Attribute Name="groups"><saml:AttributeValue>engineering</saml:AttributeValue></saml:Attribute></saml:AttributeStatement>'
                             f'<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignatureValue>{base64.b64encode(self.rnd.randbytes(64)).decode()}</ds:SignatureValue></ds:Signature></saml:Assertion></samlp:Response>')
                h, b = self.form({"SAMLResponse": base64.b64encode(assertion.encode()).decode(), "RelayState": "https://app.example.com/dashboard?tab=reports"})
                self.add("oauth", "POST", "/saml/acs", self.browser("https://idp.example.com/sso", extra=h), b)

    def uploads(self, n: int) -> None:
        for _ in range(n):
            boundary = "----WebKitFormBoundary" + self.token(16)
            kind = self.pick(["image", "pdf", "csv", "text", "avatar"])
            if kind in ("image", "avatar"):
                name = self.pick(["IMG_2041.JPG", "photo (1).png", "Screenshot 2024-12-03 at 14.22.05.png", "my cat's birthday.jpeg", "résumé-photo.webp"])
                content = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + self.rnd.randbytes(self.rnd.randint(300, 1500)) + b"\xff\xd9"
                ctype = "image/jpeg"
            elif kind == "pdf":
                name = self.pick(["Invoice #1042.pdf", "CV - Jean-Luc D'Arcy.pdf", "terms & conditions.pdf"])
                content = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" + self.rnd.randbytes(self.rnd.randint(300, 1500)) + b"\n%%EOF\n"
                ctype = "application/pdf"
            elif kind == "csv":
                name = "contacts export (2024-12).csv"
                rows = ["name,email,company,notes"] + [f"\"{self.pick(FIRST)} {self.pick(LAST)}\",{self.email()},\"Acme, Inc.\",\"{self.pick(PROSE)}\"" for _ in range(self.rnd.randint(3, 30))]
                content = "\n".join(rows).encode()
                ctype = "text/csv"
            else:
                name = self.pick(["notes.txt", "README.md", "meeting minutes.txt"])
                content = "\n\n".join(self.paragraph() for _ in range(3)).encode()
                ctype = "text/plain"
            fields = [("title", self.sentence()[:60]), ("description", self.pick(PROSE)), ("album_id", str(self.rnd.randint(1, 999)))]
            parts = []
            for key, value in fields[:self.rnd.randint(1, 3)]:
                parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{value}\r\n".encode())
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{'avatar' if kind == 'avatar' else 'file'}\"; filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n".encode() + content + b"\r\n")
            parts.append(f"--{boundary}--\r\n".encode())
            headers = self.browser("https://app.example.com/upload", "json", extra=[["Content-Type", f"multipart/form-data; boundary={boundary}"]])
            self.add("upload", "POST", self.pick(["/upload", "/api/v1/files", "/settings/avatar", "/media/new"]), headers, b"".join(parts))

    def wiki(self, n: int) -> None:
        site = "https://wiki.example.org"
        for _ in range(n):
            kind = self.rnd.random()
            title = self.pick(["Main_Page", "Ada_Lovelace", "Loire", "List_of_rivers_of_France", "Help:Editing", "Talk:C%2B%2B", "Special:Search"])
            if kind < 0.4:
                self.add("wiki", "GET", f"/wiki/{title}", self.browser(site + "/wiki/Main_Page"))
            elif kind < 0.55:
                params = {"title": title, "action": self.pick(["history", "edit", "raw", "info"]), "oldid": self.rnd.randint(10**6, 10**9)}
                self.add("wiki", "GET", "/w/index.php?" + self.q(params), self.browser(site + f"/wiki/{title}"))
            elif kind < 0.65:
                self.add("wiki", "GET", "/w/index.php?" + self.q({"search": self.pick(SEARCHES), "title": "Special:Search", "fulltext": "1"}), self.browser(site + "/"))
            else:
                h, b = self.form({"wpTextbox1": self.pick(WIKI_TEXTS) + "\n" + self.paragraph(), "wpSummary": self.pick(["typo", "rv vandalism", "+ref", "/* History */ expand", "Undid revision 12345 by [[Special:Contributions/1.2.3.4|1.2.3.4]]"]),
                                  "wpEditToken": self.token(32, "0123456789abcdef") + "+\\", "wpStarttime": "20241204101500", "wpEdittime": "20241201091011",
                                  "wpMinoredit": "1", "wpSave": "Save changes", "model": "wikitext", "format": "text/x-wiki"})
                self.add("wiki", "POST", f"/w/index.php?title={title}&action=submit", self.browser(site + f"/w/index.php?title={title}&action=edit", extra=h), b)

    def webmail(self, n: int) -> None:
        site = "https://mail.example.org"
        for _ in range(n):
            kind = self.rnd.random()
            if kind < 0.3:
                self.add("webmail", "GET", "/?" + self.q({"_task": "mail", "_mbox": self.pick(["INBOX", "Sent", "Drafts", "INBOX/Receipts", "Archive 2023"]),
                                                         "_page": self.rnd.randint(1, 5), "_uid": self.rnd.randint(1, 99999), "_action": self.pick(["show", "list", "preview"])}),
                         self.browser(site + "/?_task=mail"))
            elif kind < 0.45:
                self.add("webmail", "GET", "/?" + self.q({"_task": "mail", "_action": "search", "_q": self.pick(["invoice", "from:boss@example.com", "subject:\"weekly report\"", "has:attachment budget"]),
                                                         "_headers": "subject,from", "_mbox": "INBOX"}), self.browser(site + "/?_task=mail", "json"))
            else:
                me = f"{self.pick(FIRST)} {self.pick(LAST)}"
                body = self.pick(EMAIL_BODIES).format(name=self.pick(FIRST), me=me)
                h, b = self.form({"_token": self.token(32), "_task": "mail", "_action": "send", "_from": "1",
                                  "_to": f"\"{self.pick(FIRST)} {self.pick(LAST)}\" <{self.email()}>, {self.email()}",
                                  "_cc": self.pick(["", self.email()]), "_subject": self.pick(["Re: Invoice #1042", "Fwd: Ticket #4411", "Lunch?", "Q4 numbers (draft)", "Re: Re: select a date for the offsite"]),
                                  "_is_html": "0", "_message": body.replace("\n", "\r\n")})
                self.add("webmail", "POST", "/?_task=mail&_action=send", self.browser(site + "/?_task=mail&_action=compose", extra=h), b)

    def blog(self, n: int) -> None:
        site = "https://blog.example.com"
        for _ in range(n):
            kind = self.rnd.random()
            if kind < 0.35:
                self.add("blog", "GET", f"/2024/{self.rnd.randint(1, 12):02d}/{self.words(3, 6).replace(' ', '-')}/" + self.pick(["", "?replytocom=" + str(self.rnd.randint(1, 9999)), "#comments"]).split("#")[0],
                         self.browser(self.pick(["https://www.google.com/", site + "/", "https://news.ycombinator.com/"])))
            elif kind < 0.55:
                h, b = self.form({"comment": self.pick(PROSE) + "\n\n" + self.sentence(), "author": f"{self.pick(FIRST)} {self.pick(LAST)}",
                                  "email": self.email(), "url": self.pick(["", "https://example.net/~jane", "http://my-blog.example.org/about"]),
                                  "comment_post_ID": self.rnd.randint(1, 5000), "comment_parent": "0", "_wp_unfiltered_html_comment": self.token(10, "0123456789abcdef")})
                self.add("blog", "POST", "/wp-comments-post.php", self.browser(site + "/2024/11/x/", extra=h), b)
            elif kind < 0.8:
                h, b = self.json_body({"title": self.sentence()[:70], "content": " ".join(self.rnd.sample(HTML_RICH, self.rnd.randint(1, 3))),
                                       "status": self.pick(["draft", "publish"]), "categories": [self.rnd.randint(1, 20)],
                                       "excerpt": self.sentence(), "meta": {"_yoast_wpseo_metadesc": self.sentence()[:150]}})
                self.add("blog", "POST", f"/wp-json/wp/v2/posts/{self.rnd.randint(1, 5000)}", self.browser(site + "/wp-admin/post.php", "json", extra=h + [["X-WP-Nonce", self.token(10, "0123456789abcdef")]]), b)
            else:
                self.add("blog", "GET", "/?" + self.q({"s": self.pick(SEARCHES)}), self.browser(site + "/"))

    def misc(self, n: int) -> None:
        for _ in range(n):
            kind = self.rnd.random()
            if kind < 0.3:
                asset = self.pick(["/static/css/main.3f2a1c.css", "/static/js/app.9b1e7d.js?v=2.4.1", "/assets/fonts/Inter-Var.woff2",
                                   "/images/logo@2x.png", "/favicon.ico", "/robots.txt", "/sitemap.xml", "/manifest.webmanifest",
                                   "/wp-content/themes/twentytwentyfour/style.css?ver=1.2", "/apple-touch-icon.png",
                                   "/.well-known/security.txt", "/.well-known/openid-configuration", "/.well-known/apple-app-site-association"])
                self.add("static", "GET", asset, self.browser("https://www.example.com/", self.pick(["css", "any", "image"])))
            elif kind < 0.45:
                h, b = self.json_body({"csp-report": {"document-uri": "https://www.example.com/checkout?step=2", "referrer": "",
                                                      "violated-directive": "script-src-elem", "effective-directive": "script-src-elem",
                                                      "original-policy": "default-src 'self'; script-src 'self' https://js.stripe.com; report-uri /csp-report",
                                                      "blocked-uri": self.pick(["inline", "https://evil-ads.example/track.js", "eval"]), "status-code": 200,
                                                      "script-sample": self.pick(["", "window.dataLayer = window.dataLayer || [];"])}})
                self.add("telemetry", "POST", "/csp-report", self.browser("https://www.example.com/checkout", "any", extra=[["Content-Type", "application/csp-report"]]), b)
            elif kind < 0.65:
                doc = {"n": "pageview", "u": self.pick(["https://www.example.com/pricing?ref=hn", "https://www.example.com/blog/select-the-right-plan", "https://www.example.com/search?q=union+select+tool"]),
                       "d": "example.com", "r": self.pick([None, "https://www.google.com/", "https://t.co/abc123"]), "w": self.pick([390, 1280, 1920]),
                       "p": json.dumps({"plan": self.pick(["free", "pro"]), "logged_in": self.rnd.random() < 0.5})}
                self.add("telemetry", "POST", "/api/event", self.browser("https://www.example.com/", "any", extra=[["Content-Type", "text/plain;charset=UTF-8"]]), json.dumps(doc))
            elif kind < 0.8:
                name, last = self.pick(FIRST), self.pick(LAST)
                h, b = self.form({"username": self.pick([name.lower(), f"{name}.{last}".lower(), self.email()]),
                                  "password": self.pick(["Tr0ub4dor&3", "p@$$w0rd'2024", "<my pass>", "Zx!9 q(7)=%", "Correct-Horse-Battery-9"]),
                                  "remember_me": self.pick(["on", "0"]), "csrf_token": self.token(40), "next": self.pick(["/dashboard", "/account/orders?page=2", "/"])})
                self.add("login", "POST", "/login", self.browser("https://www.example.com/login", extra=h), b)
            elif kind < 0.9:
                h, b = self.form({"name": f"{self.pick(FIRST)} {self.pick(LAST)}", "email": self.email(), "subject": self.pick(["Order question", "Partnership", "Bug report", "Feedback"]),
                                  "message": self.paragraph() + "\r\n\r\n" + self.pick(PROSE) + "\r\n\r\nThanks,\r\n" + self.pick(FIRST),
                                  "phone": self.pick(["", "+33 6 12 34 56 78", "(555) 010-9999 ext. 12"]), "g-recaptcha-response": self.token(300, string.ascii_letters + string.digits + "_-")})
                self.add("contact", "POST", "/contact", self.browser("https://www.example.com/contact", extra=h), b)
            else:
                self.add("misc", self.pick(["HEAD", "OPTIONS"]), self.pick(["/", "/api/v1/orders", "/health"]),
                         [["User-Agent", self.pick(BROWSERS + API_CLIENTS)], ["Accept", "*/*"], ["Origin", "https://app.example.com"],
                          ["Access-Control-Request-Method", self.pick(["POST", "PUT", "DELETE"])], ["Access-Control-Request-Headers", "authorization,content-type"]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every application's count")
    ap.add_argument("--out", default=str(HERE / "benign.jsonl"))
    a = ap.parse_args(argv)
    corpus = Corpus(a.seed)
    plan = {"shop": 300, "forum": 250, "api": 250, "graphql": 80, "oauth": 120, "uploads": 60, "wiki": 120,
            "webmail": 120, "blog": 150, "misc": 250}
    for name, count in plan.items():
        getattr(corpus, name)(max(1, int(count * a.scale)))
    with open(a.out, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in corpus.rows)
    print(f"{len(corpus.rows)} requests written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
