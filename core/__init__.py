"""Bottom layer: persistence, the error tree and small runtime helpers.

Nothing here knows about Docker, the kernel or the overlay; every other
package may import from here, never the other way round.
"""
