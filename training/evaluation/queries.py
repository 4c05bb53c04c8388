"""The natural-language queries the harness asks, per task.

The original query is the task's written definition (what a business unit would type); the
paraphrase says the same in other words and is never used in pretraining or tuning, which is
the paper's generalisation claim. The generic query is the one D_future pretrains on, asked
for every task: the "static user embedding" baseline.
"""

from __future__ import annotations

from qanchor.synthetic.future_summary import FUTURE_QUERY
from qanchor.synthetic.tasks import TASKS

GENERIC_QUERY = FUTURE_QUERY

PARAPHRASES: dict[str, str] = {
    "eng_checkin_streak": "Is this person likely to check in seven days in a row on some mini app over the coming month?",
    "eng_membership_cancel": "Will this customer drop a paid mini-program subscription soon, within about a month?",
    "eng_service_activation": "Could this user switch on a service they have not used before, via its onboarding screen, in the next month?",
    "risk_overdue": "How likely is this user to be charged a penalty for paying a loan or credit card bill late this month?",
    "risk_cash_advance": "Is this user going to withdraw cash against their credit limit in the coming weeks?",
    "risk_fraud_report": "Will this person flag a payment as possibly fraudulent on the security screen within a month?",
    "mkt_coupon_redeem": "Is this shopper likely to use a store discount voucher when paying in the next four weeks?",
    "mkt_travel_booking": "Will this customer reserve a plane ticket or a hotel deal in the upcoming month?",
    "mkt_fund_purchase": "Could this user make a first purchase of an investment fund over the next month?",
    "mkt_insurance_purchase": "Is this person about to take out medical insurance within the next 30 days?",
    "mkt_refill_repeat": "Is this customer due to restock something they buy on a regular cycle, like pet food or lenses, within a month?",
    "mkt_plan_renewal": "Will this user's next quarterly service or premium payment come up in the coming 30 days?",
}


def task_query(task: str) -> str:
    return next(t.definition for t in TASKS if t.name == task)
