"""postwise-sendgrid: send through Twilio SendGrid's v3 Mail Send API and record what its
signed Event Webhook reports.

Select it with ``POSTWISE_PROVIDER=sendgrid`` and configure it under
``provider_options.sendgrid`` (see the README and docs/providers.md).
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
