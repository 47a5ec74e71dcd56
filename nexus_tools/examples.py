"""Example inputs the benchmarks, the demo and the tests send: one Online Shoppers session.

One definition, so a change to the funnel's inputs is one edit for every tool that calls
the edge with a fixed session.
"""

from __future__ import annotations

from typing import Any

SESSION: dict[str, Any] = {
    "Administrative": 2,
    "Administrative_Duration": 35.5,
    "Informational": 0,
    "Informational_Duration": 0.0,
    "ProductRelated": 18,
    "ProductRelated_Duration": 640.2,
    "BounceRates": 0.004,
    "ExitRates": 0.021,
    "PageValues": 12.7,
    "SpecialDay": 0.0,
    "Month": "Nov",
    "OperatingSystems": 2,
    "Browser": 2,
    "Region": 1,
    "TrafficType": 2,
    "VisitorType": "Returning_Visitor",
    "Weekend": False,
}
