"""Events and analytics: tracking, the event pipeline and metrics."""
