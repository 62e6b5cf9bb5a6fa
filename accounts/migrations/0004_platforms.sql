-- Platforms the daemon knows: the values of accounts.model.Platform. A row naming
-- any other platform could never be selected (no bucket) nor carry a task (no
-- adapter), so it is refused where it would be stored. Adding a platform is a
-- member in Platform plus a migration replacing this constraint (a test compares
-- the two). New in this migration: kling.
ALTER TABLE accounts ADD CONSTRAINT accounts_platform_known
    CHECK (platform IN ('openai', 'anthropic', 'gemini', 'dashscope', 'kling'));
