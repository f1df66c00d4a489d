"""Lottery tickets: IMP with rewinding, sanity-check baselines and the winning verdict."""

from ticketlab.config import STRUCTURES
from ticketlab.tickets.baselines import BASELINES, Arm, LevelContext
from ticketlab.tickets.earlybird import EarlyBird, mask_distance
from ticketlab.tickets.imp import StudyConfig, StudyResult, TicketConfig, find_ticket
from ticketlab.tickets.prac import PracSet, load_prac, save_prac
from ticketlab.tickets.ticketfile import Ticket, load_ticket, save_ticket
from ticketlab.tickets.trigger import TriggerSet
from ticketlab.tickets.verdict import Stat, Verdict, stat, summarise, verdict

__all__ = [
    "Arm", "BASELINES", "EarlyBird", "LevelContext", "PracSet", "STRUCTURES", "Stat", "StudyConfig", "StudyResult",
    "Ticket", "TicketConfig", "TriggerSet", "Verdict", "find_ticket", "load_prac", "load_ticket", "mask_distance",
    "save_prac", "save_ticket", "stat", "summarise", "verdict",
]
