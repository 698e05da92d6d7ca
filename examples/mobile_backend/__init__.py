"""A FastAPI backend for a mobile app, built on AsyncSuperApp."""
