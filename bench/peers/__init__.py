"""Services lossd is compared with: what a user would write instead, and the HTTP ceiling."""
