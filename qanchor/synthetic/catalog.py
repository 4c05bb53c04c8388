"""The synthetic world: spending categories and the merchants, mini-programs, pages, apps and
search queries that belong to each, plus how strongly each latent trait pulls a user towards
a category. Names are invented; their shape follows a payments super-app.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAITS: tuple[str, ...] = (
    "affluence",         # income, ticket size, premium merchants, wealth products
    "financial_stress",  # borrowing, repayment pressure, late-night activity
    "activity",          # overall event volume across modalities
    "mini_affinity",     # mini-program and in-app page usage
    "deal_seeking",      # coupons, discount merchants, cashback apps
    "travel",            # trips, airlines, hotels
    "investing",         # funds, wealth mini-programs, finance pages
    "gaming",            # mobile games, entertainment spend
    "health",            # clinics, pharmacies, insurance
    "trend",             # activity rising (+) or fading (-) across the window
)
T = {name: i for i, name in enumerate(TRAITS)}

#: Trait correlations (upper triangle); the rest are independent.
TRAIT_CORRELATIONS: dict[tuple[str, str], float] = {
    ("affluence", "financial_stress"): -0.45,
    ("affluence", "investing"): 0.40,
    ("affluence", "travel"): 0.30,
    ("affluence", "deal_seeking"): -0.20,
    ("activity", "mini_affinity"): 0.30,
    ("financial_stress", "gaming"): 0.25,
    ("financial_stress", "deal_seeking"): 0.15,
    ("activity", "trend"): 0.20,
}


@dataclass(frozen=True)
class Category:
    """A spending/interest category and the items users meet in it, per modality."""

    name: str
    base: float                          # prior log-preference
    traits: dict[str, float]             # trait -> pull towards this category
    merchants: tuple[tuple[str, float], ...]  # (merchant, typical amount)
    mini_programs: tuple[str, ...]
    pages: tuple[tuple[str, tuple[str, ...]], ...]  # (page, clickable elements)
    apps: tuple[str, ...]
    queries: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "food_delivery", 1.2, {"activity": 0.3, "deal_seeking": 0.2, "affluence": -0.1},
        (("QuickBite Delivery", 38.0), ("Hungry Panda Express", 45.0), ("NoodleDash", 29.0), ("Bento Box Go", 52.0)),
        ("QuickBite", "Lunch Rush", "Midnight Snacks"),
        (("takeout home", ("order again", "restaurant card", "delivery tracker")),),
        ("QuickBite", "FoodRunner"),
        ("bubble tea near me", "cheap lunch delivery", "late night noodles", "spicy hotpot delivery"),
    ),
    Category(
        "groceries", 1.0, {"affluence": 0.1},
        (("FreshMart", 86.0), ("Daily Greens Market", 64.0), ("Harvest Supermarket", 120.0)),
        ("FreshMart Online", "Community Group Buy"),
        (("grocery", ("add to cart", "weekly deals", "checkout")),),
        ("FreshMart", "GreenBasket"),
        ("organic vegetables", "rice 10kg price", "fresh fruit delivery"),
    ),
    Category(
        "dining", 0.6, {"affluence": 0.5, "activity": 0.2},
        (("Starbucks", 35.0), ("Golden Dragon Restaurant", 168.0), ("Sakura Sushi", 210.0), ("Corner Cafe", 28.0)),
        ("Table Booking", "Cafe Rewards"),
        (("restaurant booking", ("reserve table", "view menu")),),
        ("DineOut",),
        ("best hotpot restaurant", "coffee shop nearby", "sushi buffet deal"),
    ),
    Category(
        "transport", 0.9, {"activity": 0.2},
        (("Metro Transit", 6.0), ("CityRide Taxi", 32.0), ("Shell Fuel Station", 260.0), ("Bike Share", 2.5)),
        ("Metro QR Code", "CityRide", "Bike Share"),
        (("transit card", ("top up", "ride code")),),
        ("CityRide", "Metro Go"),
        ("subway route to airport", "taxi fare estimate", "bike share deposit refund"),
    ),
    Category(
        "travel", -0.4, {"travel": 1.5, "affluence": 0.3},
        (("SkyJet Airlines", 980.0), ("Lotus Hotel Group", 520.0), ("Rail Tickets Online", 230.0), ("TripNest Travel", 760.0)),
        ("Flight Booking", "Hotel Finder", "Rail 12306 Tickets"),
        (("travel", ("search flights", "hotel deals", "trip insurance")),),
        ("TripNest", "SkyJet", "HotelHub"),
        ("cheap flights to Chengdu", "hotel in Sanya", "visa for Japan", "high speed rail schedule"),
    ),
    Category(
        "shopping", 0.9, {"deal_seeking": 0.6, "affluence": 0.2},
        (("MegaMall Online", 159.0), ("Style Outlet", 230.0), ("GadgetWorld", 899.0), ("Bargain Bazaar", 45.0)),
        ("MegaMall", "Flash Sale", "Cashback Center"),
        (("shopping", ("flash sale", "product detail", "cart")),
         ("coupon center", ("claim coupon", "coupon detail"))),
        ("MegaMall", "Bargain Bazaar", "CouponHub", "CashBack Pro"),
        ("phone case discount", "winter coat sale", "coupon code", "cashback offers"),
    ),
    Category(
        "entertainment", 0.2, {"gaming": 1.5, "affluence": 0.1},
        (("GameCoin Store", 68.0), ("Star Cinema", 90.0), ("StreamPlus", 25.0), ("Arcade World", 50.0)),
        ("Mini Games", "Movie Tickets"),
        (("entertainment", ("buy tickets", "game top-up")),),
        ("Dragon Legends", "StreamPlus", "Puzzle Quest", "Arena Heroes"),
        ("game top-up discount", "new movies this week", "dragon legends tips"),
    ),
    Category(
        "credit", -0.9, {"financial_stress": 1.6, "affluence": -0.3},
        (("QuickCash Loans", 600.0), ("CreditPay Installments", 320.0), ("Card Repayment Center", 1500.0), ("MicroLend", 450.0)),
        ("Borrow Now", "Installment Helper", "Credit Score"),
        (("credit card", ("repay now", "minimum payment", "raise limit")),
         ("loan", ("borrow", "repayment plan", "extend due date"))),
        ("QuickCash", "MicroLend", "CreditPay"),
        ("borrow money fast", "repay loan early", "credit card minimum payment", "loan without credit check"),
    ),
    Category(
        "wealth", -0.6, {"investing": 1.5, "affluence": 0.5},
        (("Fortune Funds", 2000.0), ("Yield Treasury", 5000.0), ("Gold Savings", 800.0)),
        ("Fund Market", "Wealth Manager", "Daily Yield"),
        (("fund detail", ("buy fund", "view returns", "risk rating")),
         ("wealth home", ("fixed income", "fund ranking"))),
        ("Fortune Funds", "StockPilot", "WealthBox"),
        ("best index fund", "money market yield", "fund returns this year", "gold price today"),
    ),
    Category(
        "health", -0.3, {"health": 1.4},
        (("City Pharmacy", 75.0), ("Sunrise Clinic", 240.0), ("HealthGuard Insurance", 180.0), ("FitLife Gym", 300.0)),
        ("Clinic Booking", "Health Insurance", "Pharmacy Express"),
        (("medical", ("book appointment", "insurance plans", "claim")),),
        ("HealthGuard", "FitLife", "DocOnline"),
        ("pediatrician nearby", "health insurance for parents", "cold medicine delivery", "gym membership price"),
    ),
    Category(
        "utilities", 0.5, {},
        (("State Grid Electricity", 180.0), ("City Water", 60.0), ("Mobile Top-up", 50.0), ("Broadband Plus", 99.0)),
        ("Life Payments", "Phone Top-up"),
        (("utilities", ("pay bill", "auto-pay setup")),),
        ("Life Payments",),
        ("electricity bill", "phone recharge discount", "broadband plans"),
    ),
    Category(
        "education", -0.5, {"affluence": 0.3},
        (("BrightMind Courses", 680.0), ("Language Academy", 420.0), ("BookNook", 56.0)),
        ("Online Courses", "Kids Learning"),
        (("education", ("course detail", "enroll")),),
        ("BrightMind", "LinguaLeap", "BookNook"),
        ("english course online", "kids math tutor", "exam preparation books"),
    ),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
C = {name: i for i, name in enumerate(CATEGORY_NAMES)}

#: How visible each category's trait signal is in each modality (1 = fully). Different
#: modalities carry different evidence, so no single one reveals every trait.
MODALITY_VISIBILITY: dict[str, dict[str, float]] = {
    "bill": {"credit": 1.0, "travel": 1.0, "shopping": 0.8, "dining": 1.0, "wealth": 0.5, "entertainment": 0.7, "health": 0.6},
    "mini": {"wealth": 1.0, "health": 1.0, "transport": 1.0, "credit": 0.4, "travel": 0.5, "shopping": 0.6},
    "spm": {"credit": 0.9, "wealth": 1.0, "shopping": 0.7, "health": 0.5, "entertainment": 0.4},
    "app": {"shopping": 1.0, "entertainment": 1.0, "travel": 0.9, "wealth": 0.8, "credit": 0.5, "health": 0.4},
    "search": {"credit": 1.0, "travel": 0.8, "health": 0.9, "shopping": 0.7, "wealth": 0.6, "entertainment": 0.5},
}

#: Expected events per user in 90 days at average traits, and the traits that scale the volume.
EVENT_RATES: dict[str, tuple[float, dict[str, float]]] = {
    "bill": (36.0, {"activity": 0.35, "affluence": 0.15}),
    "mini": (24.0, {"activity": 0.3, "mini_affinity": 0.5}),
    "spm": (40.0, {"activity": 0.3, "mini_affinity": 0.4}),
    "app": (10.0, {"activity": 0.15, "gaming": 0.1}),
    "search": (12.0, {"activity": 0.3, "financial_stress": 0.15}),
}

OCCUPATIONS: tuple[str, ...] = (
    "student", "office_worker", "service_worker", "self_employed",
    "civil_servant", "engineer", "retired", "freelancer",
)
