"""Lottery tickets: IMP with rewinding, sanity-check baselines and the winning verdict."""

from ticketlab.tickets.baselines import BASELINES, Arm, LevelContext
from ticketlab.tickets.imp import StudyConfig, StudyResult, TicketConfig, find_ticket, summarise
from ticketlab.tickets.verdict import Stat, Verdict, stat, verdict

__all__ = [
    "Arm", "BASELINES", "LevelContext", "Stat", "StudyConfig", "StudyResult", "TicketConfig", "Verdict",
    "find_ticket", "stat", "summarise", "verdict",
]
