-- AlterTable
ALTER TABLE "User" ADD COLUMN "displayName" TEXT;

-- Backfill: every existing user gets a display name; the application writes it from now on.
UPDATE "User" SET "displayName" = COALESCE("name", substr("email", 1, instr("email", '@') - 1))
WHERE "displayName" IS NULL;
