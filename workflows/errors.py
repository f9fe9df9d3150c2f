"""One exception class per reason a sender is refused, each naming its Indonesian template.

If you add a refusal: add its class here, its template `templates/mail/refusal_<code>.txt.j2`, and a
test in tests/test_refusals.py (Discourse's rule for its receiver errors).
"""

from __future__ import annotations

from typing import ClassVar


class Refusal(Exception):
    """A message that changes nothing, is audited with its reason, and (when `notify`) is answered."""

    code: ClassVar[str] = "refusal"
    notify: ClassVar[bool] = True  # answer the sender (rate-limited, and never an unknown outsider)
    # The message's status when its sender is not told (not notified, told already today, or not someone
    # we answer): it changed nothing and waits for nobody.
    unanswered: ClassVar[str] = "ignored"

    def __init__(self, reason: str, **context: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.context = context

    @property
    def template(self) -> str:
        return f"refusal_{self.code}"


class NotStepActor(Refusal):
    """The sender is not the official the step waits on, nor their registered delegate."""

    code = "not_actor"


class RequesterCannotApprove(Refusal):
    """The requester tried to decide a step of their own request."""

    code = "requester"


class StepNotOpen(Refusal):
    """The step the reply answers is already decided or closed."""

    code = "step_closed"


class TokenExpired(Refusal):
    """The reply answers a step mail whose token has expired."""

    code = "token_expired"


class DecisionUnclear(Refusal):
    """No decision keyword in the new text, or contradicting ones."""

    code = "unclear"


class DecisionNotOffered(Refusal):
    """A keyword the step does not offer (e.g. PERBAIKI where only SETUJU/TOLAK apply)."""

    code = "not_offered"


class TooLateToCancel(Refusal):
    """BATAL arrived after what the decision led to had already happened (or been decided)."""

    code = "too_late"


class NotVouched(Refusal):
    """The receiving server did not vouch for the sender (DKIM/SPF), as the agency's config requires."""

    code = "not_vouched"
    notify = False  # a forged sender must not learn anything, nor make us mail the real one


class NotParty(Refusal):
    """STATUS or ANTREAN from an address that takes no part in the request (or holds no role): nothing is
    said, not even that the request exists (a ticket number is guessable)."""

    code = "not_party"
    notify = False


class RequestMismatch(Refusal):
    """The reply's token names one request, and its thread or subject ticket another (or none at all)."""

    code = "wrong_request"


class AlreadyRequested(Refusal):
    """The same unit already has an open request for the same sub-domain."""

    code = "duplicate"


class TooLarge(Refusal):
    """The message or an attachment is over the configured limits."""

    code = "too_large"
    unanswered = "quarantined"  # the parser refused to read it: staff look at it in quarantine


ALL_REFUSALS: tuple[type[Refusal], ...] = (
    NotStepActor,
    RequesterCannotApprove,
    StepNotOpen,
    TokenExpired,
    DecisionUnclear,
    DecisionNotOffered,
    TooLateToCancel,
    NotVouched,
    NotParty,
    RequestMismatch,
    AlreadyRequested,
    TooLarge,
)
