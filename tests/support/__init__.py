"""Test infrastructure shared by the integration and end-to-end tiers (not shipped with the product)."""
