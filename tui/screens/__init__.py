"""The app's screens: dashboard, create, detail and the small modals."""
