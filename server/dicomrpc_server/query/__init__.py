"""Search: how attribute values become index terms, and how queries match them."""
