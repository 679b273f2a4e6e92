"""postwise-mailchimp: send through Mailchimp Transactional (formerly Mandrill) with
``messages/send-raw`` and record what its signed message-event webhook reports.

Select it with ``POSTWISE_PROVIDER=mailchimp`` and configure it under
``provider_options.mailchimp`` (see the README and docs/providers.md).
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
