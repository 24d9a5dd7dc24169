"""Human-readable reports built from stage outputs (``thawline report``)."""
