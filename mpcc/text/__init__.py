"""Answer, tag, category-name and reasoning-step handling, one reading for rewards, verification, CRM and
grounding."""
