"""SAMS components: pure renderers (settings -> text/records) and the ComponentResources that wire them."""
