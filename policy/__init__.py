"""SAMS's CrossGuard policy pack. The rules are plain functions (policy.rules); __main__.py wraps them."""
