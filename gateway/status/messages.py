"""Every sentence a caretaker or a child reads about an alarm, in one table keyed by message id.

Issue 9 localises these through gettext catalogs; until then they are English and live only here,
so a translation is one table, never a search through the code. ``panel`` is the short line an
e-ink panel has room for; ``action`` the sentence saying what to do (for the local page and for
backends that show the message key's text). A rule's ``message`` key selects its entry; a key
missing here shows `FALLBACK` (config cannot add sentences: they belong in the catalog).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AlarmText:
    """The panel's short line and the sentence of what to do."""

    panel: str
    action: str


FALLBACK = AlarmText("ALARM", "Check the building; see the alarm on the dashboard.")

ALARM_MESSAGES: dict[str, AlarmText] = {
    "co2_high": AlarmText("ALARM: CO₂ too high", "Open the windows wide now."),
    "pm25_high": AlarmText(
        "ALARM: fine dust", "Close the windows if it is outdoor smog; find the source indoors."
    ),
    "silent": AlarmText(
        "ALARM: no sensor data", "Check that the sensor box is plugged in and connected."
    ),
    "room_hot": AlarmText(
        "Too hot: cool the room",
        "Give the children water, close the blinds, air the room and move to a cooler room.",
    ),
    "room_cold": AlarmText(
        "Too cold: check heating",
        "Check the heating and the radiator valves; keep the children warm.",
    ),
    "humidity_high": AlarmText(
        "Too humid: air the room", "Air the room and look for wet spots (mould risk)."
    ),
    "humidity_low": AlarmText("Air too dry", "Air briefly and avoid overheating the room."),
    "smoke": AlarmText(
        "SMOKE? Check now!",
        "Smoke is rising fast: check the kitchen and the room for fire; evacuate if you see fire.",
    ),
    "water_night_flow": AlarmText(
        "Water running at night",
        "Check the water taps and toilets: water is running with nobody in the building.",
    ),
    "water_long_flow": AlarmText(
        "Water running too long",
        "Check the taps, toilets and pipes: water has been running longer than any tap runs.",
    ),
    "power_left_on": AlarmText(
        "Power left on tonight",
        "Switch off the air conditioners and appliances left running overnight.",
    ),
    "power_lost": AlarmText(
        "POWER CUT in building",
        "Check the fuses and the main switch: a meter lost power while the roof PV still runs.",
    ),
    "pv_fault": AlarmText(
        "PV inverter fault", "Call the PV installer: the inverter reports a fault."
    ),
    "pv_no_production": AlarmText(
        "PV produces nothing",
        "Check the PV inverter and its DC switch: no production through the middle of the day.",
    ),
}


def text_for(message: str) -> AlarmText:
    """The sentences of message id ``message`` (`FALLBACK` for an unknown id)."""
    return ALARM_MESSAGES.get(message, FALLBACK)
